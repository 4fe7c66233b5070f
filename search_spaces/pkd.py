"""PKD: VKD first, then PKD's weight beta and lr with VKD's alpha, T, epochs."""

from search_spaces.base import Stage
from search_spaces.vkd import INHERIT_VKD, LR, vkd_stage

BETA = (10.0, 100.0, 500.0, 1000.0)  # [paper]


def stages(task: str) -> tuple[Stage, ...]:
    return (vkd_stage(), Stage("pkd", "pkd", {"beta": BETA, "lr": LR}, inherit=INHERIT_VKD))
