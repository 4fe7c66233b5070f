"""The search's references (fsd/tuning/plan/references.py): one teacher for `python -m fsd.cli` and a search on the
same rows."""

import os
from pathlib import Path

from conftest import ROOT


def test_fsd_cli_and_a_search_on_the_same_rows_share_their_teacher(tmp_path, monkeypatch, glue_dir):
    """`python -m fsd.cli` and tune_main.py spell a relative --data-dir the same (absolute), so a teacher one of
    them fine-tuned is the other's too (before, the cli's key held the path as typed and it fine-tuned again)."""
    import importlib.util

    from fsd import cli
    from fsd.tuning.command.checks import dry_spec
    from fsd.tuning.plan.references import teacher_spec

    loader = importlib.util.spec_from_file_location("tune_main", ROOT / "tune_main.py")
    tune_main = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(tune_main)
    monkeypatch.chdir(Path(glue_dir).parent)
    relative = os.path.join("..", Path(glue_dir).parent.name, Path(glue_dir).name)
    common = ["--task", "stsb", "--data-dir", relative, "--teacher", "packaged-minilm", "--teacher-epochs", "3",
              "--teacher-lr", "1e-4", "--storage", str(tmp_path)]
    spec, schedule = dry_spec(tune_main.build_parser().parse_args(
        [*common, "--preset", "cpu", "--set", "max_train_samples=none", "--select-on", "holdout",
         "--holdout-rows", "500"]))
    config, teacher = cli.run_specs(cli.build_parser().parse_args([*common, "--holdout-rows", "500"]))
    assert config.data_dir == str(Path(glue_dir).resolve())
    assert teacher.key() == teacher_spec(spec, schedule).key()
    other = cli.run_specs(cli.build_parser().parse_args([*common, "--holdout-rows", "400"]))[1]
    assert other.key() != teacher.key()  # the keys still tell different rows apart
