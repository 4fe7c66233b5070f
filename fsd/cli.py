"""`python -m fsd.cli`: one distillation run without Ray, for debugging one configuration.

It fine-tunes (or reuses) the teacher, then distils a student and prints each epoch's dev metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from dataclasses import MISSING, fields
from pathlib import Path

from fsd.config import ConfigError, DistillConfig
from fsd.data import DataError
from fsd.logs import quiet_libraries, show_console
from fsd.storage import absolute

if typing.TYPE_CHECKING:
    from fsd.teacher import TeacherSpec

HELP = {
    "task": "GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte or wnli",
    "teacher": "teacher: a fine-tuned teacher folder, or a pre-trained backbone (hub id, folder, or "
               "'packaged-minilm') to fine-tune first with the paper's recipe",
    "student_init": "pre-trained backbone whose first layers make the student (default: the teacher's backbone)",
    "student_layers": "number of transformer layers of the student (paper: 6)",
    "method": "objective: nokd, vkd, pkd, rkd, minilm, fsdi, fsdl, fsdg, fsdil (FSD w/o G) or fsd",
    "alpha": "weight of the hard-label loss vs KD, in [0, 1]",
    "temperature": "KD temperature T",
    "data_dir": "local GLUE folder (GLUE download layout); default: nyu-mll/glue from the hub",
    "storage": "folder for the tokenised-data cache, fine-tuned teachers and checkpoints",
    "max_train_samples": "keep the first N training rows (small budgets)",
    "max_eval_samples": "keep the first N rows of each dev split",
    "pad_to_max": "pad every batch to max_seq_len as the paper did (default: pad per batch)",
    "device": "auto, cpu or cuda[:N]",
    "group_by_length": "training batches of similar lengths (less padding; off with --pad-to-max)",
    "teacher_cache": "read the teacher's outputs from a cache in the storage folder (one teacher pass)",
    "cache_budget_gb": "disk for the cached teacher features (default: half the free disk); over it: the live teacher",
    "cache_dtype": "cached features: float16 or float32",
    "compile": "torch.compile the student",
}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(DistillConfig)
    for f in fields(DistillConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = next(k for k in (bool, int, float, str) if k in (typing.get_args(hints[f.name]) or (hints[f.name],)))
        help_ = HELP.get(f.name, f.name.replace("_", " "))
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_)
            continue
        required = f.default is MISSING
        default = None if required else f.default
        parser.add_argument(flag, type=kind, required=required, default=default,
                            help=help_ + ("" if required else f" (default: {default})"))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one `error:` line, as every other error here
        _fail(f"{message} (python -m fsd.cli --help lists the flags)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m fsd.cli", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_flags(parser)
    parser.add_argument("--teacher-epochs", type=int, default=3, help="teacher fine-tuning epochs (paper: 3)")
    parser.add_argument("--teacher-lr", type=float, default=None,
                        help="teacher learning rate (default: the paper's, 5e-5 STS-B/WNLI, else 2e-5)")
    parser.add_argument("--output-dir", default=None,
                        help="write the best epoch's checkpoint and the exported student here")
    return parser


def _fail(message: str) -> typing.NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def run_specs(args: argparse.Namespace) -> tuple[DistillConfig, TeacherSpec]:
    """The run's config and its teacher's recipe, with paths spelled as tune_main.py spells them (absolute), so
    the teacher and the caches this run makes are the ones a search on the same storage reuses."""
    from fsd.teacher import TeacherSpec, teacher_data

    values = {f.name: getattr(args, f.name) for f in fields(DistillConfig)}
    values.update({k: absolute(values[k]) for k in ("teacher", "student_init", "data_dir")})
    config = DistillConfig.from_dict(values)
    return config, TeacherSpec(config.teacher, teacher_data(config), epochs=args.teacher_epochs, lr=args.teacher_lr)


def main(argv: list[str] | None = None) -> None:
    from fsd.metrics import SAMPLES, SAMPLES_PER_S, SCORE, TRAIN_S
    from fsd.teacher import ensure_teacher
    from fsd.train import distill, export_student

    quiet_libraries()
    show_console()

    args = build_parser().parse_args(argv)
    try:
        config, spec = run_specs(args)
        if config.data_dir is not None and not Path(config.data_dir).is_dir():
            raise DataError(f"--data-dir {config.data_dir} is not a folder: point it at a GLUE download")
        teacher = ensure_teacher(spec, config.storage, config.device)
        config = config.replace(teacher=teacher, student_init=config.student_init or args.teacher)
        best = float("-inf")
        for report in distill(config, progress=True):
            shown = {k: round(v, 4) for k, v in report.metrics.items() if k.startswith(("eval", "train/loss"))}
            print(f"epoch {round(report.metrics['epoch'], 2):g}: {json.dumps(shown)} "
                  f"({report.metrics[SAMPLES]} samples; {report.metrics[TRAIN_S]:.0f} s, "
                  f"{report.metrics[SAMPLES_PER_S]:.1f} samples/s)")
            if args.output_dir and report.metrics[SCORE] > best:
                best = report.metrics[SCORE]
                report.save(args.output_dir)
        if args.output_dir:
            ranked = "holdout" if config.holdout_rows is not None else "dev"  # what eval/score was measured on
            print(f"best {ranked} score {best:.4f}; student exported to "
                  f"{export_student(args.output_dir)}")
    except (ConfigError, DataError) as e:
        _fail(str(e))


if __name__ == "__main__":
    main()
