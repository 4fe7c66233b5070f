"""RKD: VKD first, then RKD's weight beta (distance 1, angle 2 inside) and lr."""

from search_spaces.base import Stage
from search_spaces.vkd import INHERIT_VKD, LR, vkd_stage

BETA = (1.0, 10.0, 100.0)  # [ours] the paper's set was lost


def stages(task: str) -> tuple[Stage, ...]:
    return (vkd_stage(), Stage("rkd", "rkd", {"beta": BETA, "lr": LR}, inherit=INHERIT_VKD, ours=("beta",),
                               fixed={"rkd_distance": 1.0, "rkd_angle": 2.0}))
