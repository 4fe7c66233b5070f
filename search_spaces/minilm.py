"""MiniLM at fine-tuning: VKD first, then the attention/value-relation weight beta and lr."""

from search_spaces.base import Stage
from search_spaces.vkd import INHERIT_VKD, LR, vkd_stage

BETA = (0.1, 1.0, 10.0)  # [ours] the paper gives no grid for MiniLM


def stages(task: str) -> tuple[Stage, ...]:
    return (vkd_stage(), Stage("minilm", "minilm", {"beta": BETA, "lr": LR}, inherit=INHERIT_VKD, ours=("beta",)))
