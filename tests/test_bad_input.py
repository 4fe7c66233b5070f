"""Bad command lines of tune_main.py are refused before anything runs: exit code 2, one line on stderr that
names the problem and the fix, no traceback, nothing written (fsd/tuning/command/)."""

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import command_refused, make_tiny_bert
from conftest import tree as _tree
from conftest import tune_main as _tune_main

from fsd.tuning.command.checks import UsageError, parse_set, validate
from fsd.tuning.search import lock

ROOT = Path(__file__).resolve().parents[1]
HEADER = "index\tsentence1\tsentence2\tlabel"
ENV = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}  # 127.0.0.1 must not go to a proxy
ENV.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(ROOT))


def _rte(folder: Path, train_rows: int = 12, dev_rows: int = 6, header: str = HEADER,
         bad_label: str | None = None) -> str:
    """A tiny RTE folder in the GLUE download layout."""
    labels = ("entailment", "not_entailment")
    (folder / "RTE").mkdir(parents=True)
    for name, n in (("train", train_rows), ("dev", dev_rows)):
        rows = [f"{i}\tA man plays a guitar number {i}.\tA man plays music.\t{labels[i % 2]}" for i in range(n)]
        if bad_label and name == "train":
            rows[2] = f"2\tA cat sleeps.\tAn animal rests.\t{bad_label}"
        (folder / "RTE" / f"{name}.tsv").write_text("\n".join([header, *rows]) + "\n")
    return str(folder)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ctx(tmp_path):
    return {"tmp": tmp_path, "data": _rte(tmp_path / "glue"), "storage": tmp_path / "runs"}


def _base(ctx) -> list[str]:
    return ["--task", "rte", "--preset", "smoke", "--teacher", "packaged-minilm", "--student-layers", "3",
            "--data-dir", ctx["data"], "--storage", str(ctx["storage"])]


def refused(ctx, *extra: str, storage: Path | None = None, process: bool = False) -> str:
    """Run tune_main.py with the valid base command plus `extra` (later flags win) and check the refusal
    (`conftest.command_refused`); returns the error line."""
    storage = storage or ctx["storage"]
    return command_refused([*_base(ctx), "--storage", str(storage), *extra], storage, process=process, env=ENV)


@pytest.mark.parametrize("extra", [("--task", "squad"), ("--set", "lr=0"), ("--method", "distil")])
def test_refusals_as_a_real_command(ctx, extra):
    """The same refusals from a separate process: exit code 2 and one line on stderr, nothing else."""
    assert refused(ctx, *extra, process=True).startswith("error: --")


@pytest.mark.parametrize("extra,message", [(("--preset", "huge"), "argument --preset: invalid choice: 'huge'"),
                                           (("--bogus",), "unrecognized arguments: --bogus"),
                                           (("--seeds", "two"), "argument --seeds: invalid int value: 'two'")])
def test_what_argparse_refuses_is_one_error_line_too(ctx, extra, message):
    """argparse's own errors printed the whole usage block (21 lines) before their one line."""
    line = refused(ctx, *extra, process=True)
    assert message in line and line.endswith("(python tune_main.py --help lists the flags)")


# ---------------------------------------------------------------------------------------------- names
def test_unknown_task(ctx):
    line = refused(ctx, "--task", "squad")
    assert "--task 'squad' is not a GLUE task: choose one of cola, sst2" in line


def test_unknown_method(ctx):
    assert "--method 'distil' has no search schedule: choose one of vkd, pkd" in refused(ctx, "--method", "distil")


def test_unknown_stage(ctx):
    line = refused(ctx, "--stages", "vkd,fsdg-fine")
    assert "--stages names 'fsdg-fine', which the fsd schedule lacks: choose from vkd," in line


# ---------------------------------------------------------------------------------------------- data folder
def test_data_dir_that_does_not_exist(ctx):
    line = refused(ctx, "--data-dir", str(ctx["tmp"] / "nowhere"))
    assert "nowhere is not a folder: point it at a GLUE download" in line


def test_data_dir_missing_a_split(ctx, tmp_path):
    data = _rte(tmp_path / "nodev")
    os.remove(Path(data) / "RTE" / "dev.tsv")
    assert "RTE/dev.tsv not found: --data-dir must hold RTE/dev.tsv" in refused(ctx, "--data-dir", data)


def test_data_with_wrong_columns(ctx, tmp_path):
    data = _rte(tmp_path / "cols", header="index\tpremise\thypothesis\tlabel")
    assert "train.tsv has no column 'sentence1'" in refused(ctx, "--data-dir", data)


def test_data_with_a_label_outside_the_task(ctx, tmp_path):
    data = _rte(tmp_path / "labels", bad_label="contradiction")
    line = refused(ctx, "--data-dir", data)
    assert "train.tsv:4: label 'contradiction' is not one of ['entailment', 'not_entailment']; fix or remove" in line


def test_data_with_an_empty_file(ctx, tmp_path):
    data = _rte(tmp_path / "empty")
    (Path(data) / "RTE" / "train.tsv").write_text("")
    assert "train.tsv is empty: it needs a header line and at least one row" in refused(ctx, "--data-dir", data)


def test_data_too_small_for_the_teacher_memory(ctx, tmp_path):
    data = _rte(tmp_path / "few", train_rows=5)
    line = refused(ctx, "--data-dir", data)
    assert "teacher memory of 8 centroids needs 8 training rows, got 5 (of RTE/train.tsv)" in line
    assert "--set memory_size=N with N <= 5" in line


# ---------------------------------------------------------------------------------------------- models
@pytest.fixture(scope="module")
def three_label_teacher(tmp_path_factory, minilm_path):
    return make_tiny_bert(tmp_path_factory.mktemp("mnli_teacher"), minilm_path, layers=2, num_labels=3)


@pytest.fixture(scope="module")
def two_layer_backbone(tmp_path_factory, minilm_path):
    return make_tiny_bert(tmp_path_factory.mktemp("backbone"), minilm_path, layers=2)


def test_teacher_with_another_label_count(ctx, three_label_teacher):
    line = refused(ctx, "--teacher", three_label_teacher, "--student-layers", "1")
    assert "classifies into 3 labels but rte has 2: pass a teacher fine-tuned on rte, or a pre-trained" in line


def test_teacher_fine_tuned_on_another_task(ctx, two_layer_backbone, tmp_path):
    import shutil

    teacher = shutil.copytree(two_layer_backbone, tmp_path / "mrpc_teacher")
    (teacher / "fsd_teacher.json").write_text(json.dumps({"task": "mrpc", "backbone": "packaged-minilm"}))
    line = refused(ctx, "--teacher", str(teacher), "--student-layers", "1")
    assert "was fine-tuned on mrpc, not rte: pass a teacher for rte" in line


def test_teacher_folder_that_does_not_exist(ctx):
    line = refused(ctx, "--teacher", "./no_such_teacher")
    assert "--teacher ./no_such_teacher: no such folder; fix the path" in line


def test_student_deeper_than_the_teacher(ctx):
    line = refused(ctx, "--student-layers", "7")
    assert "--student-layers 7 is deeper than the 6-layer teacher packaged-minilm: choose at most 6" in line


def test_student_deeper_than_its_backbone(ctx, two_layer_backbone):
    line = refused(ctx, "--student-init", two_layer_backbone)
    assert "--student-layers 3 is deeper than the 2-layer student backbone" in line


def test_student_of_no_layers(ctx):
    assert "--student-layers: student_layers must be > 0, got 0" in refused(ctx, "--student-layers", "0")


# ---------------------------------------------------------------------------------------------- trial values
@pytest.mark.parametrize("pair,message", [
    ("lr=0", "--set lr=0: lr must be > 0, got 0.0"),
    ("lr=-3e-5", "--set lr=-3e-5: lr must be > 0, got -3e-05"),
    ("batch_size=0", "--set batch_size=0: batch_size must be > 0, got 0"),
    ("epochs=-1", "--set epochs=-1: epochs must be > 0, got -1"),
    ("alpha=1.5", r"--set alpha=1.5: alpha must lie in [0, 1], got 1.5"),
    ("lam=-0.1", r"--set lam=-0.1: lam must lie in [0, 1], got -0.1"),
    ("temprature=5", "--set temprature: no such setting; did you mean 'temperature'?"),
    ("epochs=two", "--set epochs=two: epochs takes int, not 'two'"),
    ("seed=3", "--set seed: use --seed instead"),
    ("structure_mask=false", "--set: structure_mask=False (the reference code's structures over every position, "
                             "PAD included) needs pad_to_max=True"),
])
def test_bad_trial_values(ctx, pair, message):
    assert message in refused(ctx, "--set", "lr=3e-5", "--set", pair)


def test_unmasked_structures_beside_padding_to_max_pass_the_checks(ctx):
    """The pair the hybrid refusal asks for passes, in either order: each value is checked beside it."""
    from fsd.tuning.command.checks import check_schedule

    for sets in (["structure_mask=false", "pad_to_max=true"], ["pad_to_max=true", "structure_mask=false"]):
        args = _tune_main().build_parser().parse_args([*_base(ctx), *(a for s in sets for a in ("--set", s))])
        assert check_schedule(args).task == "rte"


@pytest.mark.parametrize("lr", ["0", "-5e-5", "2"])
def test_teacher_lr_outside_zero_one(ctx, lr):
    assert f"--teacher-lr {float(lr):g}: use a learning rate between 0 and 1" in refused(ctx, f"--teacher-lr={lr}")


@pytest.mark.parametrize("grid,message", [
    ("epochs=3", "--grid epochs: no stage of the fsd schedule (preset smoke) searches it; it searches alpha,"),
    ("lr=0,1e-4", "--grid lr=0.0: lr must be > 0, got 0.0"),
    ("lr=", "--grid 'lr=': give distinct values after '=', e.g. --grid lr=1e-4,2e-4"),
    ("lr=1e-4,1e-4", "--grid 'lr=1e-4,1e-4': give distinct values"),
    ("lrr=1e-4", "--grid lrr: no such setting; did you mean 'lr'?"),
    ("seed=1,2", "--grid seed: use --seed instead"),
])
def test_bad_grids(ctx, grid, message):
    assert message in refused(ctx, "--grid", grid)


def test_negative_cache_budget(ctx):
    assert "--cache-budget-gb: cache_budget_gb must be >= 0" in refused(ctx, "--cache-budget-gb", "-1")


def test_zero_seeds(ctx):
    assert "--seeds 0: use 1 or more" in refused(ctx, "--seeds", "0")


# ---------------------------------------------------------------------------------------------- resources
def test_more_gpus_than_present(ctx):
    n = torch.cuda.device_count() + 1
    line = refused(ctx, "--gpus-per-trial", str(n))
    assert f"--gpus-per-trial {n} but " in line and "visible: use at most" in line


@pytest.mark.parametrize("share,message", [("0.3", "does not divide a GPU"), ("1.5", "a trial takes whole GPUs")])
def test_gpu_share_that_is_not_a_divisor_of_one(ctx, share, message):
    line = refused(ctx, "--gpus-per-trial", share)
    assert f"--gpus-per-trial {share}" in line and message in line


# ---------------------------------------------------------------------------------------------- storage
def test_storage_below_a_file(ctx):
    (ctx["tmp"] / "afile").write_text("x")
    line = refused(ctx, storage=ctx["tmp"] / "afile" / "sub")
    assert "/afile/sub cannot be created: " in line and "afile is a file; choose another path" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permissions")
def test_storage_in_a_read_only_folder(ctx):
    locked = ctx["tmp"] / "ro"
    locked.mkdir(mode=0o500)
    try:
        assert "ro is not writable; choose another path" in refused(ctx, storage=locked / "runs")
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("path,message", [
    ("/proc/fsd-runs", "/proc is on proc, a file system of the kernel's where no files can be created"),
    ("/sys/fsd-runs", "/sys is on sysfs, a file system of the kernel's where no files can be created"),
    ("/proc/sys/fsd-runs", "/proc/sys is on proc"),
])
def test_storage_on_a_kernel_file_system(ctx, path, message):
    """Root passes every permission check there, and the kernel refused the first mkdir: a traceback, exit 1."""
    line = refused(ctx, storage=Path(path), process=True)
    assert line.startswith(f"error: --storage {path} cannot be created: {message}")
    assert line.endswith("; choose another path")


def test_storage_with_a_name_too_long(ctx):
    parent_before = _tree(ctx["tmp"])
    line = refused(ctx, storage=ctx["tmp"] / ("n" * 300) / "runs")
    assert "cannot be used: the name nnnnnnnnnnnnnnnnnnnn... is 300 bytes long, over the 255 its file system " \
           "allows; choose another path" in line
    deep = Path(ctx["tmp"], *["d" * 200] * 21)  # every name fits, the whole does not
    assert "cannot be used: the path is 4" in refused(ctx, storage=deep) and _tree(ctx["tmp"]) == parent_before


@pytest.fixture
def read_only_mount(tmp_path):
    """A read-only tmpfs mounted in tmp_path (root only), unmounted after the test."""
    point = tmp_path / "ro-mount"
    point.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(point)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {made.stderr.decode().strip()}")
    yield point
    subprocess.run(["umount", str(point)], check=True)


def test_storage_on_a_read_only_mount(ctx, read_only_mount):
    line = refused(ctx, storage=read_only_mount / "runs")
    assert line.endswith(f"cannot be created: {read_only_mount} is on a read-only file system; choose another path")
    line = refused(ctx, storage=read_only_mount)  # the mount point itself: it exists, and nothing goes in
    assert f"cannot be written: {read_only_mount} is on a read-only file system" in line


def test_storage_in_an_immutable_folder(ctx):
    """No permission, for root too: `chattr +i` (the permission bits do not stop root)."""
    locked = ctx["tmp"] / "immutable"
    locked.mkdir()
    if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not allowed here")
    try:
        assert f"cannot be created: {locked} is not writable; choose another path" in refused(
            ctx, storage=locked / "runs")
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)


def test_storage_that_holds_foreign_files(ctx):
    home = ctx["tmp"] / "home"
    (home / "thesis").mkdir(parents=True)
    (home / "notes.txt").write_text("mine")
    line = refused(ctx, storage=home)
    assert "holds files fsd-tune did not write (notes.txt, thesis): choose a new or empty folder" in line


def test_storage_that_is_a_search_folder(ctx):
    folder = ctx["storage"] / "rte-fsd"
    folder.mkdir(parents=True)
    (folder / "ledger.json").write_text("{}")
    line = refused(ctx, storage=folder)
    assert f"is one search's folder, not a storage folder: pass its parent, {ctx['storage']}" in line


# ---------------------------------------------------------------------------------------------- resume
def _stored_search(ctx, **search):
    folder = ctx["storage"] / "rte-fsd"
    folder.mkdir(parents=True)
    stored = {"task": "rte", "method": "fsd", "preset": "smoke", "teacher": "packaged-minilm", "student_init": None,
              "student_layers": 2, "extra": {"lr": 3e-5}, **search}
    (folder / "ledger.json").write_text(json.dumps({"search": stored, "stages": {}}))


def test_resume_without_a_search(ctx):
    assert "--resume: no search to resume in" in refused(ctx, "--resume")


def test_resume_with_a_contradicting_flag(ctx):
    _stored_search(ctx)
    line = refused(ctx, "--resume", "--set", "lr=3e-5")
    assert "--resume: student_layers is 3 but the stored search used 2; use the same value" in line


def test_resume_with_contradicting_trial_values(ctx):
    _stored_search(ctx, student_layers=3)
    line = refused(ctx, "--resume", "--set", "lr=1e-4", "--compile")  # --compile is speed only: allowed
    assert "--resume: --set gives lr=0.0001 but the stored search used lr=3e-05" in line


def test_resume_with_another_teacher_recipe(ctx):
    """The teacher is fine-tuned (or found) again on resume: another recipe would switch teachers mid-search."""
    _stored_search(ctx, student_layers=3, extra={}, teacher_epochs=3, teacher_lr=None)
    line = refused(ctx, "--resume", "--teacher-lr", "5e-5")
    assert "--resume: teacher_lr is 5e-05 but the stored search used None; use the same value" in line
    line = refused(ctx, "--resume", "--teacher-epochs", "2")
    assert "--resume: teacher_epochs is 2 but the stored search used 3; use the same value" in line


def test_resume_with_another_grid(ctx):
    """A stored --grid comes back from JSON as lists: the same values resume, others are refused."""
    _stored_search(ctx, student_layers=3, extra={}, grids={"lr": [1e-4, 2e-4]})
    line = refused(ctx, "--resume", "--grid", "lr=1e-4,3e-4")
    assert "--resume: grids is {'lr': [0.0001, 0.0003]} but the stored search used {'lr': [0.0001, 0.0002]}" in line
    search = validate(_tune_main().build_parser().parse_args([*_base(ctx), "--resume", "--grid", "lr=1e-4,2e-4"]))
    assert search.spec.grids == {"lr": (1e-4, 2e-4)} and search.schedule.stage("vkd").grid["lr"] == (1e-4, 2e-4)


def test_new_search_where_one_exists(ctx):
    _stored_search(ctx)
    line = refused(ctx)
    assert "a search already exists in" in line and "add --resume to continue it, or choose another --storage" in line


def test_damaged_ledger(ctx):
    (ctx["storage"] / "rte-fsd").mkdir(parents=True)
    (ctx["storage"] / "rte-fsd" / "ledger.json").write_text('{"search": ')
    assert "ledger.json cannot be read" in refused(ctx, "--resume")


# ---------------------------------------------------------------------------------------------- services
def test_unreachable_mlflow_server(ctx):
    uri = f"http://127.0.0.1:{_free_port()}"
    line = refused(ctx, "--mlflow-uri", uri)
    assert f"--mlflow-uri {uri} is unreachable" in line and "start the server" in line


def test_mlflow_sqlite_file_that_cannot_be_created(ctx):
    (ctx["tmp"] / "afile").write_text("x")
    line = refused(ctx, "--mlflow-uri", f"sqlite:///{ctx['tmp']}/afile/mlflow.db")
    assert "cannot be created" in line and "choose another path" in line


def test_unreachable_ray_cluster(ctx):
    address = f"127.0.0.1:{_free_port()}"
    line = refused(ctx, "--address", address)
    assert f"--address {address} is unreachable" in line and "leave --address out" in line


def test_ray_address_without_a_port(ctx):
    assert "--address 127.0.0.1 is not host:port" in refused(ctx, "--address", "127.0.0.1")


# ---------------------------------------------------------------------------------------------- the good path
def test_a_good_command_passes_every_check_without_ray_and_writes_nothing(ctx):
    code = ("import sys, tune_main\n"
            "from fsd.tuning.command.checks import validate\n"
            "s = validate(tune_main.build_parser().parse_args(sys.argv[1:]))\n"
            "print(s.spec.extra, s.spec.gpus_per_trial, s.spec.data_dir, 'ray' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code, *_base(ctx), "--set", "lr=3e-5", "--set", "batch_size=16",
                        "--set", "alpha=0.7", "--cache-budget-gb", "0"],
                       capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[-1] == "False"  # no Ray import on the way
    assert "{'cache_budget_gb': 0.0, 'compile': False, 'lr': 3e-05, 'batch_size': 16, 'alpha': 0.7}" in r.stdout
    assert not ctx["storage"].exists()


@pytest.mark.parametrize("pair,value", [
    ("lr=3e-5", 3e-5), ("batch_size=16", 16), ("structure_mask=false", False), ("memory_size=none", None),
    ("cache_dtype=float32", "float32"), ("max_train_samples=100", 100), ("pad-to-max=yes", True),
])
def test_set_values_take_the_type_of_their_field(pair, value):
    key, parsed = parse_set(pair)
    assert key == pair.split("=")[0].replace("-", "_") and parsed == value and type(parsed) is type(value)


def test_set_without_a_value():
    with pytest.raises(UsageError, match="is not KEY=VALUE"):
        parse_set("lr")


# ---------------------------------------------------------------------------------------------- compare
def _stored_method_search(ctx, method: str, **search):
    folder = ctx["storage"] / f"rte-{method}"
    folder.mkdir(parents=True)
    (folder / "ledger.json").write_text(json.dumps({"search": {"task": "rte", "method": method, **search},
                                                    "stages": {}}))
    return folder


def test_compare_reusing_a_search_of_other_settings(ctx):
    folder = _stored_method_search(ctx, "vkd", preset="quick")
    line = refused(ctx, "--compare", "vkd,fsd", "--seeds", "3")
    assert line == (f"error: --compare: preset is 'smoke' but the stored search in {folder} used 'quick'; use the "
                    "same value or another --storage")


def test_compare_reusing_a_search_in_use(ctx):
    folder = _stored_method_search(ctx, "fsd", preset="smoke")
    with lock.held(folder):
        line = refused(ctx, "--compare", "vkd,fsd")
    assert line.startswith(f"error: another fsd-tune search is running in {folder} (pid {os.getpid()})")


def test_compare_reuses_a_search_of_another_seed_count(ctx):
    """How many seeds ranked a search's grid points does not matter to a comparison that re-runs its winner."""
    _stored_method_search(ctx, "vkd", preset="smoke", seeds=2)
    search = validate(_tune_main().build_parser().parse_args([*_base(ctx), "--compare", "vkd", "--seeds", "3"]))
    assert search.compare == ["vkd"] and search.spec.seeds == 3


def test_strategy_numbers_are_checked(ctx):
    assert "--reduction-factor 1: use a factor above 1" in refused(ctx, "--strategy", "halving",
                                                                  "--reduction-factor", "1")
    assert "--first-rung 0: use a share of a trial's budget in (0, 1]" in refused(ctx, "--strategy", "halving",
                                                                                 "--first-rung", "0")
    assert "--first-rung needs --strategy halving or optuna" in refused(ctx, "--first-rung", "0.2")
    assert "--num-samples needs --strategy optuna" in refused(ctx, "--strategy", "halving", "--num-samples", "5")
    assert "--num-samples 0: use 1 or more" in refused(ctx, "--strategy", "optuna", "--num-samples", "0")


def test_resume_with_another_strategy_is_refused(ctx):
    _stored_search(ctx, student_layers=3, extra={}, teacher_epochs=3, teacher_lr=None, strategy="grid")
    line = refused(ctx, "--resume", "--strategy", "halving")
    assert "--resume: strategy is 'halving' but the stored search used 'grid'; use the same value" in line


# ---------------------------------------------------------------------------------------------- the holdout
def test_resume_with_another_holdout(ctx):
    _stored_search(ctx, student_layers=3, extra={}, select_on="holdout", holdout_rows=4)
    line = refused(ctx, "--resume", "--select-on", "holdout", "--holdout-rows", "6")
    assert "--resume: holdout_rows is 6 but the stored search used 4; use the same value" in line
    line = refused(ctx, "--resume")
    assert "--resume: select_on is 'dev' but the stored search used 'holdout'" in line


@pytest.mark.parametrize("extra,message", [
    (("--holdout-rows", "4"), "--holdout-rows needs --select-on holdout"),
    (("--select-on", "holdout", "--holdout-rows", "12"),
     "--holdout-rows 12: a holdout of 12 rows leaves none of the 12 training rows to train on; choose another size"),
    (("--select-on", "holdout", "--holdout-rows", "1"), "--holdout-rows 1: a holdout of 1 rows cannot be stratified"),
    (("--select-on", "holdout", "--holdout-rows", "0"), "--holdout-rows 0: use 1 or more rows"),
    (("--set", "holdout_rows=5"), "--set holdout_rows: use --select-on holdout --holdout-rows instead"),
])
def test_bad_holdouts(ctx, extra, message):
    assert message in refused(ctx, *extra)


@pytest.mark.parametrize("extra,message", [
    (("--ablation",), "--ablation re-runs FSD's winner: it needs --compare with fsd"),
    (("--compare", "vkd,pkd", "--batch-sizes", "8,16"), "--batch-sizes re-runs FSD's winner: it needs --compare"),
    (("--compare", "vkd,fsd", "--batch-sizes", "8,x"), "--batch-sizes '8,x': give distinct whole numbers"),
    (("--compare", "vkd,fsd", "--batch-sizes", "8,8"), "--batch-sizes '8,8': give distinct whole numbers"),
])
def test_bad_paper_table_studies(ctx, extra, message):
    assert message in refused(ctx, *extra)


# ---------------------------------------------------------------------------------------------- the hub
NO_SUCH_MODEL = "fsd-tune-test/no-such-model"  # a hub id no cache holds


def _hub_at(monkeypatch, endpoint: str) -> None:
    """The hub's API at `endpoint` (on 127.0.0.1: nothing leaves this machine), offline mode off."""
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)


def test_a_model_the_hub_cannot_serve_is_refused_before_anything_is_written(ctx, monkeypatch):
    port = _free_port()  # nothing listens there: refused at once
    _hub_at(monkeypatch, f"http://127.0.0.1:{port}")
    line = refused(ctx, "--teacher", NO_SUCH_MODEL)
    assert f"--teacher {NO_SUCH_MODEL} is not in the local Hugging Face cache and the hub (http://127.0.0.1:{port}) " \
           "cannot be reached" in line and "--teacher packaged-minilm to work offline" in line
    line = refused(ctx, "--student-init", NO_SUCH_MODEL)
    assert f"--student-init {NO_SUCH_MODEL} is not in the local Hugging Face cache" in line


def test_a_hub_that_never_answers_is_given_up_on_within_seconds(ctx, monkeypatch):
    import time

    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        _hub_at(monkeypatch, f"http://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        line = refused(ctx, "--teacher", NO_SUCH_MODEL)
        assert time.monotonic() - started < 30 and "cannot be reached (timed out)" in line


def test_offline_mode_is_honoured_for_models_and_for_the_glue_data(ctx, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    assert "Hugging Face offline mode is on (HF_HUB_OFFLINE)" in refused(ctx, "--teacher", NO_SUCH_MODEL)
    storage = ctx["storage"]
    argv = ["--task", "rte", "--preset", "smoke", "--teacher", "packaged-minilm", "--storage", str(storage)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        _tune_main().main(argv)  # no --data-dir
    assert exit_.value.code == 2 and not storage.exists()
    assert "no --data-dir, so the GLUE data must come from the Hugging Face hub, but Hugging Face offline mode is on" \
           in err.getvalue() and "pass --data-dir with a GLUE download folder" in err.getvalue()
    assert len(err.getvalue().strip().splitlines()) == 1
    dry = subprocess.run([sys.executable, str(ROOT / "tune_main.py"), *argv, "--dry-run"], capture_output=True,
                         text=True, cwd=ROOT, env=ENV, timeout=300)
    assert dry.returncode == 0, dry.stderr[-2000:]  # --dry-run needs no data: offline it still counts the cost


def test_a_search_that_fails_before_its_first_stage_leaves_no_ledger(tmp_path, glue_dir, monkeypatch):
    """The corrected command can then start afresh; a search that was already there keeps its ledger."""
    import fsd.teacher
    from fsd.tuning.plan.ledger import Ledger
    from fsd.tuning.plan.spec import SearchSpec, identity
    from fsd.tuning.search.runner import run_search
    from search_spaces import get_schedule

    def cannot_fetch(*args, **kwargs):
        raise OSError("the teacher cannot be fetched")

    monkeypatch.setattr(fsd.teacher, "ensure_teacher", cannot_fetch)
    spec = SearchSpec(task="rte", method="vkd", storage=str(tmp_path), mlflow_uri=f"sqlite:///{tmp_path}/mlflow.db",
                      teacher="packaged-minilm", preset="smoke", data_dir=glue_dir)
    schedule = get_schedule("vkd", "rte", "smoke")
    with pytest.raises(OSError):
        run_search(spec, schedule)
    assert not Ledger(spec.folder).exists
    kept = Ledger(spec.folder)
    kept.data["search"] = identity(spec)
    kept.save()
    with pytest.raises(OSError):
        run_search(spec, schedule)
    assert Ledger(spec.folder).exists


# ---------------------------------------------------------------------------------------------- contradictions
@pytest.mark.parametrize("flags,message", [
    (("--dry-run", "--resume"), "--dry-run with --resume: a dry run prices a new search from its flags and reads no "
                                "stored search; drop --resume to see the cost, or the dry run to continue"),
    (("--estimate", "--resume"), "--estimate with --resume: a dry run prices a new search"),
    (("--report", "--dry-run"), "--dry-run with --report: a dry run prices a search, --report rebuilds the page"),
    (("--report", "--resume"), "--report with --resume: --report trains nothing; run --resume first, then --report"),
    (("--report", "--compare", "vkd"), "--report with --compare: --report rebuilds the page of what is stored; run "
                                       "--compare first, then --report"),
    (("--compare", "vkd,fsd", "--resume"), "--compare with --resume: --compare continues each method's stored "
                                           "search by itself; drop --resume"),
])
def test_flags_that_contradict_each_other(ctx, flags, message):
    """They passed silently: --dry-run --resume priced a new search, --report --dry-run wrote the report."""
    _stored_search(ctx, student_layers=3)  # a search that --resume or --report would read
    assert message in refused(ctx, *flags)


def test_report_with_a_flag_that_shapes_a_search(ctx):
    """The report covers every search of the task in the storage folder: a flag that would choose or train one
    changes nothing there, and is refused rather than silently ignored."""
    _stored_search(ctx, student_layers=3)
    line = refused(ctx, "--report")  # _base gives --preset smoke, --teacher, --data-dir, ...
    assert line.startswith("error: --report with --data-dir: the report covers every search of the task in "
                           "--storage and trains nothing, so --data-dir changes nothing there; drop it")
    argv = ["--task", "rte", "--report", "--storage", str(ctx["storage"]), "--method", "vkd"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        _tune_main().main(argv)
    assert exit_.value.code == 2 and "--report with --method: " in err.getvalue()


def test_a_dry_run_of_a_comparison_is_not_a_contradiction(ctx):
    r = subprocess.run([sys.executable, str(ROOT / "tune_main.py"), *_base(ctx), "--method", "vkd", "--dry-run",
                        "--compare", "vkd,pkd"], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "error" not in r.stderr and not ctx["storage"].exists()
