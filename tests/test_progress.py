"""The console's progress: plain lines away from a terminal (a file, a pipe), a bar on one."""

from __future__ import annotations

import io

import pytest

from fsd.progress import Progress, format_duration


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_away_from_a_terminal_progress_is_plain_lines_with_counts_and_rate():
    out = io.StringIO()
    with Progress(100, "teacher rte epoch 1/3", stream=out, every_s=0.0) as bar:
        for _ in range(4):
            bar.update(25)
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) == 4  # one per update (every_s=0); the closing line would say 100/100 again
    assert lines[0].startswith("teacher rte epoch 1/3: 25/100 samples (25%), ")
    assert lines[-1].startswith("teacher rte epoch 1/3: 100/100 samples (100%), ") and "samples/s" in lines[-1]


def test_plain_lines_come_at_most_every_so_often_and_once_at_the_end():
    out = io.StringIO()
    bar = Progress(1000, "cache", unit="row", stream=out, every_s=3600.0)
    for _ in range(10):
        bar.update(100)
    assert out.getvalue() == ""  # nothing before the interval has passed
    bar.close()
    bar.close()  # closing twice prints once
    assert out.getvalue().count("\n") == 1 and "cache: 1,000/1,000 rows (100%)" in out.getvalue()


def test_on_a_terminal_progress_is_a_bar_and_disabled_progress_prints_nothing():
    term = Terminal()
    with Progress(50, "epoch 1/2", stream=term) as bar:
        bar.update(50)
    assert "\r" in term.getvalue() and "epoch 1/2" in term.getvalue()
    quiet = io.StringIO()
    with Progress(50, "epoch 1/2", stream=quiet, enabled=False, every_s=0.0) as bar:
        bar.update(50)
    assert quiet.getvalue() == ""


def test_durations_read_as_a_person_writes_them():
    assert [format_duration(s) for s in (0.4, 59, 61, 3599, 3600, 7620)] == [
        "0 s", "59 s", "1 min 01 s", "59 min 59 s", "1 h 00 min", "2 h 07 min"]


def _trial(tid, status, alpha, samples=None, budget=100, best=None, error_file=None):
    from types import SimpleNamespace

    result = {} if samples is None else {"progress/samples": samples, "progress/budget": budget}
    analysis = {} if best is None else {"eval/score": {"max": best}}
    return SimpleNamespace(trial_id=tid, status=status, config={"alpha": alpha, "seed": 42}, last_result=result,
                           metric_analysis=analysis, error_file=error_file, path=f"/runs/{tid}")


@pytest.fixture
def lines(console_lines):
    return console_lines


def test_a_stage_says_what_finished_what_runs_the_best_so_far_and_the_time_left(tmp_path, lines):
    from fsd.tuning.search.stage_progress import StageProgress

    shown = StageProgress("vkd", 4, ("alpha",), halving=True, heartbeat_s=3600)
    shown.start -= 100  # 100 s into the stage
    stopped = _trial("t0", "RUNNING", 0.2, samples=30, best=0.7012)  # Ray marks it TERMINATED after the callback
    running = _trial("t1", "RUNNING", 0.5, samples=50, best=0.7810)
    error = tmp_path / "error.txt"
    error.write_text("Traceback (most recent call last):\n  ...\nFloatingPointError: non-finite loss at epoch 0\n")
    failed = _trial("t2", "RUNNING", 0.7, samples=20, error_file=str(error))
    trials = [stopped, running, failed]
    shown.on_trial_complete(0, trials, stopped)
    assert lines[-1].startswith("stage vkd: trial alpha=0.2: 70.12, stopped early at 30 of 100 samples | "
                                "1/4 done, 2 running, 1 stopped early, 0 failed; best 78.10 (alpha=0.5); 1 min 40 s")
    # 100 samples in 100 s; left: t1's 50, t2's 80 and one trial not started (100): at most 230 s
    assert lines[-1].endswith("at most 3 min 50 s left")
    stopped.status = "TERMINATED"
    shown.on_trial_error(0, trials, failed)
    assert lines[-1].startswith("stage vkd: trial alpha=0.7 failed: FloatingPointError: non-finite loss at epoch 0 "
                                f"(traceback: {error}) | 2/4 done, 1 running, 1 stopped early, 1 failed")
    lost = tmp_path / "lost.txt"
    lost.write_text("ray.exceptions.ActorDiedError: The actor died unexpectedly\nray.exceptions.NodeDiedError: node "
                    "died\n")
    running.error_file, failed.status = str(lost), "ERROR"
    shown.on_trial_recover(0, trials, running)
    assert lines[-1].startswith("stage vkd: trial alpha=0.5 lost its worker (ray.exceptions.NodeDiedError: node died); "
                                "retried from its last checkpoint | 2/4 done, 1 running")
    # A killed worker: Ray's text goes on with its exit detail and guesses at causes; the line ends before them.
    lost.write_text("ray.exceptions.ActorDiedError: The actor died because of an error raised in its creation task\n"
                    "The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR Worker exit "
                    "detail: Worker unexpectedly exits with a connection error code 2. End of file. Some common causes "
                    "include: (1) the process was killed by the OOM killer\n")
    shown.on_trial_recover(0, trials, running)
    assert lines[-1].startswith("stage vkd: trial alpha=0.5 lost its worker (The actor is dead because its "
                                "worker process has died. Worker exit type: SYSTEM_ERROR); retried from its last "
                                "checkpoint | ")
    # A trial that raised is retried too (within --max-failures): it failed, its worker was not lost.
    lost.write_text("Traceback (most recent call last):\nValueError: the teacher memory needs more rows\n")
    shown.on_trial_recover(0, trials, running)
    assert lines[-1].startswith("stage vkd: trial alpha=0.5 failed (ValueError: the teacher memory needs more rows); "
                                "retried from its last checkpoint | ")


def test_a_heartbeat_comes_only_while_trials_run_and_not_before_its_interval(lines):
    from fsd.tuning.search.stage_progress import StageProgress

    shown = StageProgress("fsd", 2, ("alpha",), halving=False, heartbeat_s=3600)
    trials = [_trial("t0", "RUNNING", 0.2, samples=10)]
    shown.on_step_end(0, trials)
    assert lines == []
    shown.last -= 3600
    shown.on_step_end(0, trials)
    assert len(lines) == 1 and lines[0].startswith("stage fsd: 0/2 done, 1 running, 0 stopped early, 0 failed; ")
    assert "~" in lines[0] and "left" in lines[0]  # the grid runs every trial to its budget: an estimate
    trials[0].status = "TERMINATED"
    shown.last -= 3600
    shown.on_step_end(0, trials)
    assert len(lines) == 1  # nothing runs: no heartbeat
