"""A chaos soak: a search run quietly, then run again while N faults land at random times, resumed after
each, and the two compared: the final ledger, every trial's results and MLflow's runs and models must be
equal (bench/soak_state.py), no run logged twice, no trial lost, no Ray process of the soak left over.

    python bench/soak.py --faults 20 --seed 1 --storage <storage> --log <storage>/soak.log -- \\
        --task sst2 --data-dir ../shared/glue_data --teacher packaged-minilm --student-layers 3 --preset cpu

The faults (--kinds): `driver-kill` (SIGKILL of the search's driver), `worker-kill` (SIGKILL of the Ray worker
that runs a trial), `ctrl-c` (SIGINT to the driver, which must exit with code 130), `mlflow-restart` (the
`mlflow server` on 127.0.0.1 stopped, then started again on the same port and store), `disk-full` (the soaked
search's storage is a tmpfs of its own, filled to 4 MB free, then freed; mounting one needs root, and without
it the kind is left out and the summary says so). They come in random order, every kind once before any
comes twice. They land at N random points (--seed) of the first half (--spread) of the quiet run's timeline,
each reached when the soaked search has finished the stages and trials the quiet run had by then (between
two of them, when as much time has passed), and --min-delay seconds at least after the fault before; so all
N land before the end, at any moment of it: start-up, teacher, a stage, between stages. After a fault that
ends the driver, the same command runs with --resume (without it where no ledger was left). Records an
outage left queued are sent by one more --resume at the end. Both runs get `--max-failures <N + 1>`, so that
a trial whose worker is killed more than once is retried every time.

Every line of the searches and of the soak goes, timestamped, to --log, and the two states compared to
<log>.quiet.json and <log>.soaked.json; the last line printed is a JSON summary. Exit code 0 when the soaked
search ended equal to the quiet one, every fault was injected and recovered from, and nothing was left
running; 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# This folder's modules, and the test suite's `mlflow server` on 127.0.0.1 (tests/mlflowserver.py).
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "tests")]
import soak_state  # noqa: E402
from mlflowserver import Server  # noqa: E402
from soak_procs import ROOT, Driver, Log, fill, leftovers, trial_workers  # noqa: E402

KINDS = ("driver-kill", "worker-kill", "ctrl-c", "mlflow-restart", "disk-full")
LEFT_FREE = 4 * 2**20  # what a full disk keeps free: less than one checkpoint of the smallest search
MAX_UNPLANNED = 3  # driver exits that no fault caused, each resumed, before the soak gives up
DISK_ERRORS = ("error: not enough space in ", "error: the disk of ")  # docs/faults.md, "A full disk"
SERVER_AWAY = re.compile(r"error: the MLflow server \S+ stopped answering before the search began")
TRIAL_DONE = re.compile(r"^stage \S+( \(confirm\))?: trial .* \| \d+/\d+ done")
# A line a driver should not print whatever the fault: Ray's own raylet report, a Python traceback.
RAW = re.compile(r"\(raylet\)|^Traceback \(most recent call last\)")


def tmpfs_mb(quiet: Path) -> int:
    """A size for the soaked search's tmpfs: twice what the quiet run left, plus what a stage's pre-flight check
    asks free before its trials (fsd/tuning/search/disk.py: a trial more than the largest stage ran, each at 4x
    the teacher's weights while no checkpoint is there to measure), plus 128 MB. Sized from what was left alone,
    the cpu preset's first stage was refused for want of 1.7 GB on a 1 GB tmpfs, whatever the faults."""
    left = sum(f.stat().st_size for f in quiet.rglob("*") if f.is_file())
    weights = max((f.stat().st_size for f in quiet.glob("teacher/*/*") if f.suffix in (".safetensors", ".bin")),
                  default=0)
    trials = max((r.get("trials") or 0 for ledger in quiet.glob("*/ledger.json")
                  for r in json.loads(ledger.read_text())["stages"].values()), default=0)
    return int((2 * left + (trials + 1) * 4 * weights) / 2**20) + 128


class Soak:
    def __init__(self, a: argparse.Namespace):
        self.a, self.log = a, Log(Path(a.log).resolve())
        self.root = Path(a.storage).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.task, self.method = _flag(a.search, "--task"), _flag(a.search, "--method") or "fsd"
        # The soak's searches carry a Ray temp folder of their own: every process they start is found by it
        # (tests/raycluster.py), none of anyone else's.
        self.ray_root = tempfile.mkdtemp(prefix="soak-", dir="/tmp")
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": self.ray_root,
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # Ray's one-machine mode: 127.0.0.1 only
        self.kinds, self.bag = list(a.kinds), []
        self.kind_rng, self.time_rng = random.Random(a.seed), random.Random(a.seed + 1)
        self.faults: list[dict] = []
        self.unplanned: list[str] = []
        self.findings: list[str] = []
        self.disk_note = "not asked for" if "disk-full" not in self.kinds else ""
        self.mount: Path | None = None
        self.drivers: list[Driver] = []  # the soaked search's, in order
        self.seen = (0.0, time.monotonic())  # the soaked search's last progress: quiet-run time, when seen

    # ------------------------------------------------------------------------------------------ the searches
    def args(self, storage: Path, uri: str, resume: bool) -> list[str]:
        more = [] if "--max-failures" in self.a.search else ["--max-failures", str(self.a.faults + 1)]
        return [*self.a.search, "--storage", str(storage), "--mlflow-uri", uri, *more, *(["--resume"] * resume)]

    def launch(self, storage: Path, uri: str) -> Driver:
        """The search again: with --resume where a ledger was left (a new search that stops before its first
        stage leaves none, and is then started afresh, as its user would)."""
        resume = (storage / f"{self.task}-{self.method}" / "ledger.json").is_file()
        who = f"run{len(self.drivers) + 1}"
        self.drivers.append(Driver(self.args(storage, uri, resume), self.env, self.log, who))
        return self.drivers[-1]

    def quiet(self) -> None:
        (self.root / "quiet-server").mkdir(exist_ok=True)
        server = Server(self.root / "quiet-server").start()
        self.quiet_uri = f"sqlite:///{self.root / 'quiet-server' / 'server.db'}"  # read after the server stops
        try:
            driver = Driver(self.args(self.root / "quiet", server.uri, False), self.env, self.log, "quiet")
            rc = driver.wait(self.a.timeout)
        finally:
            server.stop()
        if rc != 0:
            driver.signal(signal.SIGKILL)
            raise SystemExit(f"the quiet run failed (exit code {rc}): see {self.a.log}")
        self.quiet_s = driver.ended - driver.started
        # When the quiet run had finished each stage, and its k-th trial: how far a soaked search has got.
        self.stage_marks: dict[str, float] = {}
        self.trial_marks: list[float] = []
        for t, line in driver.lines:
            if line.startswith("stage "):
                self.stage_marks[line.split()[1].rstrip(":")] = t - driver.started
            if TRIAL_DONE.match(line):
                self.trial_marks.append(t - driver.started)
        self.log("soak", f"quiet run: {self.quiet_s:.0f} s", echo=True)

    def position(self, storage: Path) -> float:
        """How far along the quiet run's timeline the soaked search is: the last stage or trial it finished,
        at the time the quiet run had, plus the time since that was seen (so it runs on between them, and
        ahead of the search after a fault set it back: faults then come sooner, so before the end)."""
        ledger = soak_state.ledger(storage, self.task, self.method)
        done = [s for s, r in ledger.get("stages", {}).items() if r.get("status") == "done"]
        trials = min(_reported(storage), len(self.trial_marks))
        reached = max([self.stage_marks.get(s, 0.0) for s in done] + [self.trial_marks[trials - 1] if trials else 0])
        if reached > self.seen[0]:
            self.seen = (reached, time.monotonic())
        return self.seen[0] + time.monotonic() - self.seen[1]

    def next_kind(self) -> str:
        if not self.bag:  # every kind once, in a random order, before any comes again
            self.bag = self.kind_rng.sample(self.kinds, len(self.kinds))
        return self.bag.pop()

    def until(self, driver: Driver, at: float, storage: Path, uri: str) -> Driver | None:
        """Let the search run to `at` seconds of the quiet run's timeline, and --min-delay seconds at least;
        None if it finished meanwhile. A driver that exits on its own with an error is a finding: it is
        logged and resumed."""
        earliest = time.monotonic() + self.a.min_delay
        while True:
            rc = driver.wait(1.0)
            if rc == 0:
                return None
            if rc is not None:
                driver = self.unplanned_exit(driver, rc, storage, uri)
            elif time.monotonic() >= earliest and self.position(storage) >= at:
                return driver

    def unplanned_exit(self, driver: Driver, rc: int, storage: Path, uri: str) -> Driver:
        last = self.faults[-1] if self.faults else {}
        if last.get("kind") == "disk-full" and rc == 1 and driver.last_line().startswith(DISK_ERRORS) \
                and self.log.now() - last.get("ended", 0) < 120:
            # It measured the disk while full and said so after the filler had gone: the fault's doing.
            last["what"] += f"; the driver stopped for it just after (exit code 1): {driver.last_line()}"
            self.log("soak", f"fault {last['n']}: {last['what']}", echo=True)
            return self.launch(storage, uri)
        self.unplanned.append(f"{driver.who} exited with code {rc} with no fault: {driver.last_line()}")
        self.log("soak", f"UNPLANNED: {self.unplanned[-1]}", echo=True)
        if len(self.unplanned) > MAX_UNPLANNED:
            raise RuntimeError("the search keeps failing on its own")
        return self.launch(storage, uri)

    # ------------------------------------------------------------------------------------------ the faults
    def inject(self, kind: str, driver: Driver, storage: Path, server: Server, hold_s: float) -> Driver | None:
        """One fault; the driver that goes on afterwards (a resumed one if it ended), None if the search ended."""
        fault = {"n": len(self.faults) + 1, "kind": kind, "at_s": round(self.log.now() - self.soak_t0, 1)}
        self.faults.append(fault)
        self.log("soak", f"fault {fault['n']}/{self.a.faults}: {kind}", echo=True)
        t = time.monotonic()
        if kind == "driver-kill":
            driver.signal(signal.SIGKILL)
            fault["what"] = f"driver killed, exit code {driver.wait(60)}"
        elif kind == "ctrl-c":
            driver.signal(signal.SIGINT)
            rc = driver.wait(self.a.ctrl_c_s)
            if rc is None:
                driver.signal(signal.SIGKILL)
                rc = driver.wait(60)
                self.findings.append(f"fault {fault['n']}: Ctrl-C did not stop the driver in {self.a.ctrl_c_s} s")
            elif rc != 130:
                self.findings.append(f"fault {fault['n']}: Ctrl-C ended the driver with exit code {rc}, not 130: "
                                     f"{driver.last_line()}")
            fault["what"] = f"driver exit code {rc} after {time.monotonic() - t:.1f} s"
        elif kind == "worker-kill":
            fault["what"] = self.kill_worker(driver, storage)
        elif kind == "mlflow-restart":
            server.stop()
            rc = driver.wait(hold_s)
            server.start()  # away until it answers again: its start is part of the outage
            fault["what"] = f"server away {time.monotonic() - t:.1f} s"
        elif kind == "disk-full":
            written = fill(self.mount, LEFT_FREE)
            rc = driver.wait(hold_s)
            (self.mount / "someone-elses-file").unlink()
            fault["what"] = f"disk full {time.monotonic() - t:.1f} s ({written / 2**20:.0f} MB written)"
            if rc not in (None, 0, 1):
                self.findings.append(f"fault {fault['n']}: a full disk ended the driver with exit code {rc}, not 1")
        rc = driver.proc.poll()
        if rc is not None and kind in ("mlflow-restart", "disk-full", "worker-kill"):
            fault["what"] += f"; the driver ended meanwhile (exit code {rc}): {driver.last_line()}"
        fault["injected"] = not fault["what"].startswith("not injected")
        fault["ended"] = self.log.now()
        self.log("soak", f"fault {fault['n']}: {fault['what']}", echo=True)
        if rc is None:
            return driver
        if rc == 0:
            return None
        # The search rides these out, but for a new search that has no MLflow experiment yet (docs/faults.md).
        new_search_stopped = rc == 1 and SERVER_AWAY.match(driver.last_line())
        if kind in ("mlflow-restart", "worker-kill") and not (kind == "mlflow-restart" and new_search_stopped):
            self.findings.append(f"fault {fault['n']}: {kind} ended the driver with exit code {rc}")
        fault["resumed_as"] = self.launch(storage, server.uri)
        return fault["resumed_as"]

    def kill_worker(self, driver: Driver, storage: Path) -> str:
        """SIGKILL a Ray worker that runs a trial of the live driver's cluster (waiting for one to start)."""
        deadline = time.monotonic() + self.a.worker_wait
        while time.monotonic() < deadline and driver.wait(0.2) is None:
            token_file = storage / f"{self.task}-{self.method}" / "ray_token"
            token = token_file.read_text().strip() if token_file.is_file() else ""
            workers = trial_workers(self.ray_root, token) if token else []
            if workers:
                pid = self.time_rng.choice(sorted(workers))
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                return f"trial worker pid {pid} killed"
        return "not injected: no trial was running" + (" (the search had ended)" if driver.proc.poll() is not None
                                                       else f" within {self.a.worker_wait:.0f} s")

    # ------------------------------------------------------------------------------------------ the soak
    def mount_disk(self) -> Path:
        """The soaked search's storage: on a tmpfs of its own when the disk fault is asked for and can be had."""
        if "disk-full" not in self.kinds:
            return self.root / "soak"
        mount = self.root / "disk"
        mount.mkdir(exist_ok=True)
        size_mb = self.a.disk_mb or tmpfs_mb(self.root / "quiet")
        made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mount)],
                              capture_output=True, text=True)
        if made.returncode != 0:
            self.kinds.remove("disk-full")
            self.disk_note = f"left out: a tmpfs cannot be mounted here ({made.stderr.strip()[:160]})"
            self.log("soak", f"disk-full {self.disk_note}", echo=True)
            return self.root / "soak"
        self.mount = mount
        self.disk_note = f"in the random set: storage on a {size_mb} MB tmpfs"
        return mount / "search"

    def soaked(self) -> Path:
        storage = self.mount_disk()
        (self.root / "soak-server").mkdir(exist_ok=True)
        server = Server(self.root / "soak-server").start()
        self.soak_uri = f"sqlite:///{self.root / 'soak-server' / 'server.db'}"
        self.soak_t0 = self.log.now()
        try:
            driver: Driver | None = self.launch(storage, server.uri)
            self.seen = (0.0, time.monotonic())
            # Where each fault lands: random points of the first --spread of the quiet run's timeline.
            points = sorted(self.time_rng.uniform(0, self.a.spread * self.quiet_s) for _ in range(self.a.faults))
            for k, at in enumerate(points):
                kind = self.next_kind()
                hold = self.time_rng.uniform(self.a.hold_min, self.a.hold_max)
                driver = self.until(driver, at, storage, server.uri)
                if driver is None:
                    self.log("soak", f"the search ended before fault {k + 1}", echo=True)
                    break
                driver = self.inject(kind, driver, storage, server, hold)
                if driver is None:
                    break
            while driver is not None:  # to its end: a driver that fails on its own is resumed
                rc = driver.wait(self.a.timeout)
                if rc is None:
                    driver.signal(signal.SIGKILL)
                    raise RuntimeError(f"the search did not end within {self.a.timeout} s")
                driver = None if rc == 0 else self.unplanned_exit(driver, rc, storage, server.uri)
            outbox = storage / f"{self.task}-{self.method}" / "mlflow_outbox.json"
            if outbox.is_file() and json.loads(outbox.read_text()).get("queue"):
                self.log("soak", "records still queued for MLflow: one more --resume sends them", echo=True)
                last = self.launch(storage, server.uri)
                if last.wait(self.a.timeout) != 0:
                    self.unplanned.append("the --resume that sends the queued records failed")
        finally:
            server.stop()
        self.soak_s = self.log.now() - self.soak_t0
        return storage

    def run(self) -> dict:
        self.log("soak", f"soak: {self.a.faults} faults of {', '.join(self.kinds)}; seed {self.a.seed}", echo=True)
        self.quiet()
        aborted, soaked = None, {"trials": {}, "mlflow": {"runs": {}}}
        try:
            storage = self.soaked()
            quiet = soak_state.state(self.root / "quiet", self.quiet_uri, self.task, self.method)
            soaked = soak_state.state(storage, self.soak_uri, self.task, self.method)
            for name, found in (("quiet", quiet), ("soaked", soaked)):  # what was compared, kept beside the log
                Path(f"{self.a.log}.{name}.json").write_text(json.dumps(found, indent=1, sort_keys=True))
        except Exception as e:  # noqa: BLE001 - the soak itself broke (a server that would not stop): said, not hidden
            aborted = f"{type(e).__name__}: {str(e)[:300]}"
            self.log("soak", f"ABORTED: {aborted}", echo=True)
            self.soak_s = self.log.now() - getattr(self, "soak_t0", self.log.now())
        finally:
            stray = leftovers(self.ray_root)  # the drivers too: they carry the mark
            shutil.rmtree(self.ray_root, ignore_errors=True)
            if self.mount is not None:
                subprocess.run(["umount", "-l", str(self.mount)], capture_output=True)
        diffs = [f"not compared: the soak aborted ({aborted})"] if aborted else soak_state.differences(quiet, soaked)
        for fault in self.faults:
            fault.pop("ended", None)
            after = fault.pop("resumed_as", None)
            if after is not None and after.lines:  # the resumed driver's first word: the search is back
                fault["back_s"] = round(after.lines[0][0] - self.soak_t0 - fault["at_s"], 1)
        injected = sum(f.get("injected", False) for f in self.faults)
        self.findings += [f"{d.who} printed a raw line: {line[:160]}" for d in self.drivers for _, line in d.lines
                          if RAW.search(line)]
        summary = {
            "faults": self.a.faults, "injected": injected,
            "recovered": injected if not self.unplanned and not diffs else 0,
            "by_kind": {k: sum(f["kind"] == k and f.get("injected", False) for f in self.faults) for k in KINDS},
            "disk": self.disk_note, "quiet_s": round(self.quiet_s, 1), "soak_s": round(self.soak_s, 1),
            "lost_s": round(self.soak_s - self.quiet_s, 1),
            "restarts_s": round(sum(f.get("back_s", 0) for f in self.faults), 1), "drivers": len(self.drivers),
            "equal": not diffs, "differences": diffs[:20], "duplicates": soak_state.duplicates(soaked),
            "trials": len(soaked["trials"]), "mlflow_runs": sum(soaked["mlflow"]["runs"].values()),
            "unplanned": self.unplanned, "findings": self.findings, "stray": stray, "ray_root": self.ray_root,
            "aborted": aborted, "fault_log": self.faults}
        summary["ok"] = (not aborted and not diffs and not stray and not self.unplanned and not self.findings
                         and injected == self.a.faults and summary["duplicates"] == 0)
        for fault in self.faults:
            self.log("soak", json.dumps(fault))
        for difference in diffs:
            self.log("soak", f"difference: {difference}")
        self.log("soak", "summary " + json.dumps(summary))
        return summary


def _reported(storage: Path) -> int:
    """Trials of a search that have reported a result (Ray creates `result.json` empty when a trial starts)."""
    count = 0
    for result in storage.glob("stages/*/*/train_trial_*/result.json"):
        try:
            count += result.stat().st_size > 0
        except OSError:  # an experiment set aside meanwhile
            continue
    return count


def _flag(args: list[str], name: str) -> str | None:
    return next((args[i + 1] for i, x in enumerate(args[:-1]) if x == name), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faults", type=int, default=20, help="how many faults to inject")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault schedule (kinds, delays, hold times)")
    p.add_argument("--kinds", type=lambda s: s.split(","), default=list(KINDS), help="comma-separated fault kinds")
    p.add_argument("--storage", required=True, help="folder for both searches, their MLflow servers and the tmpfs")
    p.add_argument("--log", required=True, help="file for every line of the searches and the soak")
    p.add_argument("--min-delay", type=float, default=5.0, help="seconds at least between two faults")
    p.add_argument("--spread", type=float, default=0.5, help="the faults land in this share of the quiet run's "
                   "timeline (measured by the stages and trials the soaked search has finished)")
    p.add_argument("--hold-min", type=float, default=5.0, help="seconds at least a server stays down or a disk full")
    p.add_argument("--hold-max", type=float, default=30.0, help="seconds at most a server stays down or a disk full")
    p.add_argument("--worker-wait", type=float, default=120.0, help="seconds to wait for a trial to kill")
    p.add_argument("--ctrl-c-s", type=float, default=60.0, help="seconds a Ctrl-C'd driver has to exit")
    p.add_argument("--disk-mb", type=int, default=0, help="the tmpfs's size (0: twice the quiet run's storage, plus "
                   "what a stage's disk check asks free, plus 128 MB)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds at most for one run of the search")
    p.add_argument("search", nargs=argparse.REMAINDER, help="-- then the search's arguments, without --storage "
                   "and --mlflow-uri")
    a = p.parse_args()
    a.search = a.search[1:] if a.search[:1] == ["--"] else a.search
    unknown = set(a.kinds) - set(KINDS)
    if unknown or not _flag(a.search, "--task") or {"--storage", "--mlflow-uri", "--resume"} & set(a.search):
        p.error(f"unknown kinds {sorted(unknown)}" if unknown else "give the search's arguments after --, with "
                "--task and without --storage, --mlflow-uri or --resume")
    summary = Soak(a).run()
    print(json.dumps(summary))
    raise SystemExit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
