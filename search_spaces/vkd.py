"""VKD (stage 1 of docs/method.md §7): alpha, T, lr and epochs by grid search."""

from search_spaces.base import Stage

ALPHA = (0.2, 0.5, 0.7)  # [ours] the paper's set was lost
TEMPERATURE = (5.0, 10.0, 20.0)  # [ours] the paper's set was lost
LR = (1e-5, 2e-5, 5e-5)  # [paper]
EPOCHS = (3, 4)  # [ours] the paper's set was lost
INHERIT_VKD = {"alpha": "vkd", "temperature": "vkd", "epochs": "vkd"}


def vkd_stage() -> Stage:
    return Stage("vkd", "vkd", {"alpha": ALPHA, "temperature": TEMPERATURE, "lr": LR, "epochs": EPOCHS},
                 ours=("alpha", "temperature", "epochs"))


def stages(task: str) -> tuple[Stage, ...]:
    return (vkd_stage(),)
