"""`DistillConfig`: one validated, frozen configuration for one distillation run (one trial)."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, fields
from typing import Any

# The objectives' names (fsd.objectives.OBJECTIVES has one class per name, a test holds them equal): the
# configuration checks a name without importing the objectives, which import it.
METHODS = ("nokd", "vkd", "pkd", "rkd", "minilm", "fsdi", "fsdl", "fsdg", "fsdil", "fsd")


# Values a field may take only beside another field's value (DistillConfig refuses them otherwise): a check
# of one value alone puts them beside it, and the check of all values together decides.
PAIRED = {"structure_mask": {"pad_to_max": True}}

# DistillConfig values that change speed only (results equal up to float rounding), and where files go: two
# configurations that differ in these alone train the same student.
SPEED_FIELDS = ("teacher_cache", "cache_budget_gb", "cache_dtype", "compile", "device")
PLACEMENT_FIELDS = ("storage",)


class ConfigError(ValueError):
    """A configuration value or key that cannot run; the message names it and the fix."""


@dataclass(frozen=True)
class DataSpec:
    """What decides a run's rows and batches, shared by the teacher, the student and every cache of them:
    written once here, held by `DistillConfig` (a subclass) and by the teacher's `fsd.teacher.TeacherSpec`."""

    task: str
    data_dir: str | None = None
    max_seq_len: int = 128
    batch_size: int = 32
    eval_batch_size: int = 128
    pad_to_max: bool = False  # the paper's padding (and plain random batches); default: per batch
    group_by_length: bool = True  # training batches of similar lengths (less padding); off with pad_to_max
    seed: int = 42  # the order of the training batches (and, in a run, everything else)
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    # Rank the run on this many training rows set aside (never trained on) instead of dev; None: on dev, the
    # paper's protocol. The rows are drawn with `holdout_seed`, the same for every seed of a search.
    holdout_rows: int | None = None
    holdout_seed: int = 42

    @property
    def holdout(self):
        """The `fsd.data.Holdout` this run is ranked on, or None (ranked on dev)."""
        from fsd.data import Holdout

        return None if self.holdout_rows is None else Holdout(self.holdout_rows, self.holdout_seed)

    @property
    def data(self) -> DataSpec:
        """These settings alone (of a DistillConfig: its data settings)."""
        return DataSpec(**{f.name: getattr(self, f.name) for f in fields(DataSpec)})


@dataclass(frozen=True, kw_only=True)
class DistillConfig(DataSpec):
    """Everything one distillation run depends on (its data settings are `DataSpec`'s fields); stored in
    every checkpoint and logged as params."""

    teacher: str  # a teacher fine-tuned on `task` (folder or hub id)
    student_init: str | None = None  # pre-trained backbone of the student; None: the teacher's backbone
    student_layers: int = 6
    method: str = "vkd"
    # loss weights (docs/method.md §2)
    alpha: float = 0.5
    temperature: float = 10.0
    beta: float = 1.0
    gamma_i: float = 1.0
    gamma_l: float = 1.0
    gamma_g: float = 1.0
    lam: float = 0.5
    rkd_distance: float = 1.0
    rkd_angle: float = 2.0
    memory_size: int | None = None  # None: the task's (300 QQP/MNLI, else 100)
    memory_iters: int = 3
    memory_init: str = "kmeans++"
    structure_mask: bool = True
    # At each evaluation, the relation difference (Eq. 12-13) between teacher and student on the first
    # evaluation batch, as `relations/*`: the paper's Fig. 6 over training (costs a teacher pass over that batch).
    track_relations: bool = False
    # optimisation
    lr: float = 5e-5
    epochs: int = 3
    eval_every: int | None = None  # training samples between dev evaluations (rungs); None: once per epoch
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    grad_clip: float = 1.0
    # placement
    storage: str = "./fsd_runs"
    device: str = "auto"
    # speed (results do not depend on these beyond float rounding)
    teacher_cache: bool = True  # read the teacher's outputs from the storage cache instead of running it
    # Disk for cached teacher features (GB); over it: the live teacher. None: at most CACHE_DISK_SHARE of the
    # storage folder's free disk (fsd.teacher_source.cache_decision).
    cache_budget_gb: float | None = None
    cache_dtype: str = "float16"  # cached features: float16 (half the disk) or float32 (exact)
    compile: bool = False  # torch.compile the student (CUDA; pays off on long runs)

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), _field_types()[f.name])
        self._check_values()

    def _check_values(self) -> None:
        from fsd.tasks import get_task

        try:
            get_task(self.task)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        positive = ["lr", "epochs", "batch_size", "eval_batch_size", "max_seq_len", "temperature",
                    "student_layers", "memory_iters"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ["alpha", "lam", "warmup_ratio"]:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        for name in ["beta", "gamma_i", "gamma_l", "gamma_g", "rkd_distance", "rkd_angle", "weight_decay",
                     "grad_clip"]:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ["memory_size", "max_train_samples", "max_eval_samples", "eval_every", "holdout_rows"]:
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0 (or unset), got {getattr(self, name)}")
        if self.memory_init not in ("kmeans++", "reference"):
            raise ConfigError(f"memory_init must be 'kmeans++' or 'reference', got {self.memory_init!r}")
        if self.cache_budget_gb is not None and self.cache_budget_gb < 0:
            raise ConfigError(f"cache_budget_gb must be >= 0 (0: no feature cache), got {self.cache_budget_gb}")
        if self.cache_dtype not in ("float16", "float32"):
            raise ConfigError(f"cache_dtype must be 'float16' or 'float32', got {self.cache_dtype!r}")
        if self.device != "auto" and not self.device.startswith(("cpu", "cuda")):
            raise ConfigError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        if not self.structure_mask and not self.pad_to_max:
            # The reference code's structures read all max_seq_len positions, PAD states included; a batch
            # padded to its own length has PAD states only up to that length, and the flattened layout
            # fills the rest with zeros: a mix of the two that neither the paper nor our default computes.
            raise ConfigError("structure_mask=False (the reference code's structures over every position, PAD "
                              "included) needs pad_to_max=True: a batch padded to its own length has PAD states "
                              "only up to that length and zeros beyond it")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DistillConfig:
        """Build from a flat dict (a Tune config, a checkpoint); unknown keys are errors.

        Raises:
            ConfigError: an unknown key (with the nearest valid name), a wrong type or a bad value.
        """
        for key in values:
            _check_key(key)
        missing = [f.name for f in fields(cls) if f.default is dataclasses.MISSING and f.name not in values]
        if missing:
            raise ConfigError(f"config is missing {', '.join(missing)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> DistillConfig:
        return dataclasses.replace(self, **changes)


def check_partial(values: dict[str, Any]) -> dict[str, Any]:
    """`values` as they are, once each key is checked to be a DistillConfig field and each value of its type:
    a partial DistillConfig (a stage's trial defaults, completed by each trial's grid point).

    Raises:
        ConfigError: an unknown key (with the nearest valid name) or a value of the wrong type.
    """
    for key, value in values.items():
        _check_key(key)
        _check_type(key, value, _field_types()[key])
    return values


def _check_key(key: str) -> None:
    names = [f.name for f in fields(DistillConfig)]
    if key not in names:
        near = difflib.get_close_matches(key, names, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else f"; valid keys: {', '.join(names)}"
        raise ConfigError(f"unknown config key {key!r}{hint}")


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(DistillConfig)


def _check_type(name: str, value: Any, hint: Any) -> None:
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return
    for kind in allowed:
        if kind is bool and isinstance(value, bool):
            return
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        if kind is str and isinstance(value, str):
            return
    names = " or ".join(getattr(k, "__name__", str(k)) for k in allowed)
    raise ConfigError(f"{name} must be {names}, got {value!r}")
