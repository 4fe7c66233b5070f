"""The path users take: the model and GLUE from a Hugging Face hub, through the real `huggingface_hub` and
`datasets` clients, against a hub on 127.0.0.1 that serves them in the hub's own layout (tests/hubserver.py).

The model repository `bert-base-uncased` here is a 6-layer random BERT (hidden 32) with bert-base's
vocabulary, a stand-in so that a search runs in minutes; QQP, MNLI and QNLI's training rows are format-true
stand-ins made from real GLUE sentences (hubserver.standin_glue), the other tasks the real GLUE rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_tiny_bert
from hubserver import Hub, digest, glue_repository, model_repository, standin_glue

from fsd.data import load_raw
from fsd.tasks import TASKS, get_task

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
REAL = ("cola", "sst2", "mrpc", "stsb", "rte", "wnli")


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory, glue_dir, minilm_path):
    root = tmp_path_factory.mktemp("hub")
    standins = standin_glue(root / "standin", glue_dir)
    folders = {t: glue_dir if t in REAL else str(standins) for t in TASKS}
    glue_repository(root / "repos", folders)
    model_repository(root / "repos", "bert-base-uncased", make_tiny_bert(root / "tiny", minilm_path, layers=6))
    return root, folders


def _env(hub: Hub, home: Path) -> dict[str, str]:
    """A process that reaches the hub only through HF_ENDPOINT, with caches of its own."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    return {**env, "HF_ENDPOINT": hub.url, "HF_HOME": str(home), "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}",
            "TOKENIZERS_PARALLELISM": "false"}


LOAD_ALL = """
import json, sys
from hubserver import digest
from fsd.data import load_raw
from fsd.tasks import TASKS
out = {name: {split: digest(rows) for split, rows in load_raw(name, None).items()} for name in TASKS}
json.dump(out, open(sys.argv[1], "w"))
"""


@pytest.fixture(scope="module")
def from_the_hub(hub_root, tmp_path_factory):
    """Every task read through `datasets.load_dataset("nyu-mll/glue", ...)` from the hub, in a process of its own."""
    root, _ = hub_root
    out = tmp_path_factory.mktemp("loaded") / "hub.json"
    with Hub(root / "repos") as hub:
        r = subprocess.run([sys.executable, "-c", LOAD_ALL, str(out)], capture_output=True, text=True,
                           env=_env(hub, out.parent / "hf"), timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        assert any("/resolve/" in q and q.endswith(".parquet") for q in hub.requests)  # really downloaded
    return json.loads(out.read_text())


@pytest.mark.parametrize("task", list(TASKS))
def test_a_task_from_the_hub_has_the_rows_labels_and_label_order_of_the_local_folder(task, hub_root, from_the_hub):
    _, folders = hub_root
    local = load_raw(task, folders[task])
    hub = from_the_hub[task]
    assert set(hub) == set(local) == {"train", *get_task(task).dev_splits}
    for split in local:
        assert hub[split] == digest(local[split]), (task, split)


@pytest.mark.long
def test_the_hub_command_searches_qqp_with_the_hubs_model_and_data(hub_root, tmp_path):
    """`python tune_main.py --task qqp --preset smoke` with only HF_ENDPOINT set: no --teacher, no --data-dir."""
    root, _ = hub_root
    storage = tmp_path / "runs"
    with Hub(root / "repos") as hub:
        r = subprocess.run([sys.executable, str(ROOT / "tune_main.py"), "--task", "qqp", "--preset", "smoke",
                            "--storage", str(storage), "--max-concurrent", "1"], capture_output=True, text=True,
                           env=_env(hub, tmp_path / "hf"), timeout=1200, cwd=tmp_path)
        requests = list(hub.requests)
    artifacts = Path(os.environ.get("FSD_TEST_ARTIFACTS", ROOT / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    # What the README shows of this command: the narrative (stderr), then the results (stdout).
    (artifacts / "hub-qqp-smoke.txt").write_text(r.stderr + r.stdout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "GET /bert-base-uncased/resolve/" in "\n".join(requests)  # the model came from the hub
    assert any("/datasets/nyu-mll/glue/resolve/" in q and "qqp/" in q for q in requests)  # and the data
    ledger = json.loads((storage / "qqp-fsd" / "ledger.json").read_text())
    assert ledger["stages"]["fsd"]["status"] == "done" and ledger["best"]["stage"]
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{storage}/mlflow.db")
    pipe = mlflow.transformers.load_model("models:/fsd-qqp-fsd@best")
    assert pipe.model.config.id2label == {0: "not_duplicate", 1: "duplicate"}  # the hub's names, not "0"/"1"


def _refused(hub_root, tmp_path, *extra, die_after=None):
    root, _ = hub_root
    storage = tmp_path / "runs"
    with Hub(root / "repos") as hub:
        hub.die_after = die_after
        r = subprocess.run([sys.executable, str(ROOT / "tune_main.py"), "--task", "rte", "--preset", "smoke",
                            "--storage", str(storage), *extra], capture_output=True, text=True,
                           env=_env(hub, tmp_path / "hf"), timeout=600, cwd=tmp_path)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
    assert "Traceback" not in r.stderr and not storage.exists()  # nothing written
    return lines[0]


def test_a_model_the_hub_does_not_have_is_one_line_and_nothing_written(hub_root, tmp_path):
    line = _refused(hub_root, tmp_path, "--teacher", "nobody/no-such-model")
    assert "--teacher nobody/no-such-model: the hub (http://127.0.0.1:" in line and "has no such model" in line


@pytest.mark.parametrize("local_data,said", [(False, "nyu-mll/glue (rte) could not be downloaded from"),
                                              (True, "--teacher bert-base-uncased: its download from")])
def test_a_hub_that_dies_mid_download_is_one_line_and_nothing_written(hub_root, tmp_path, glue_dir, local_data,
                                                                       said):
    """Half a file, then no server: the data's download (no --data-dir) or the model's (with it)."""
    extra = ("--data-dir", glue_dir) if local_data else ()
    line = _refused(hub_root, tmp_path, *extra, die_after=512)
    assert said in line and "check the connection and run again" in line
