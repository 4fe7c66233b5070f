"""FSD, the paper's staged greedy schedule (docs/method.md §7, stages 1-6).

From stage 3 on, beta is folded into the gammas (beta = 1, gamma_i = beta_2 * m, gamma_l = beta_2 * (1-m)),
so every later weight means the same thing in every stage: `L = L_VKD + gamma_i L_I + gamma_l L_L +
gamma_g L_G`, and stage 5's `beta * gamma_g` is simply `gamma_g`.
"""

from search_spaces.base import Derived, Stage
from search_spaces.vkd import INHERIT_VKD, vkd_stage

BETA = (1e-3, 1e-2, 0.1, 1.0, 10.0)  # [ours] stage 2's beta set was lost
LR = (3e-5, 4e-5, 5e-5, 6e-5)  # [paper]
MIX = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # [ours] the paper's mix set was lost
COARSE = (0.0, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0)  # [paper] stage 5a, both weights
GAMMA_G = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0)  # [paper] stage 6
IL_SCALE = (0.1, 1.0, 10.0)  # [paper; the x10 is ours] stage 6, x the best (gamma_i, gamma_l)
AFTER_VKD = {**INHERIT_VKD, "lr": "vkd"}  # lr from VKD for the FSDG stages: [ours]
FAMILY = ("fsdi", "fsdl", "fsdil", "fsdil-mix", "fsdg-refine-lam")  # the refine stages carry the coarse winner


def stages(task: str) -> tuple[Stage, ...]:
    two = {"beta": BETA, "lr": LR}
    return (
        vkd_stage(),
        Stage("fsdi", "fsdi", two, inherit=INHERIT_VKD, ours=("beta",)),
        Stage("fsdl", "fsdl", two, inherit=INHERIT_VKD, ours=("beta",)),
        Stage("fsdil", "fsdil", two, inherit=INHERIT_VKD, ours=("beta",)),
        Stage("fsdil-mix", "fsdil", derived=(Derived("mix", "gamma_i+gamma_l", "fsdil", MIX),),
              inherit={**INHERIT_VKD, "lr": "fsdil"}, fixed={"beta": 1.0}, ours=("gamma_i+gamma_l",)),
        Stage("memory", "fsdg", prepare="memory", fixed={"memory_iters": 3}),
        Stage("fsdg-coarse", "fsdg", {"gamma_g": COARSE, "lam": COARSE}, inherit=AFTER_VKD, fixed={"beta": 1.0}),
        Stage("fsdg-refine-g", "fsdg", derived=(Derived("refine", "gamma_g", "fsdg-coarse"),),
              inherit={**AFTER_VKD, "lam": "fsdg-coarse"}, fixed={"beta": 1.0}, carry=("fsdg-coarse",)),
        Stage("fsdg-refine-lam", "fsdg", derived=(Derived("refine", "lam", "fsdg-coarse", bounds=(0.0, 1.0)),),
              inherit={**AFTER_VKD, "gamma_g": "fsdg-refine-g"}, fixed={"beta": 1.0}, carry=("fsdg-refine-g",)),
        # [ours] The best FSD-family student found so far competes with the last stage's trials (the paper's
        # grid has no gamma_g = 0 point, so FSD w/o G, which the search holds, could never be its result).
        Stage("fsd", "fsd", {"gamma_g": GAMMA_G},
              derived=(Derived("scale", "gamma_i+gamma_l", "fsdil-mix", IL_SCALE),),
              inherit={**AFTER_VKD, "lam": "fsdg-refine-lam"}, fixed={"beta": 1.0}, carry=FAMILY, ours=("carry",)),
    )
