"""Whether a search folder can take a search: no ledger for a new one; for --resume, a ledger that agrees with
the command and checkpoints that are data. The command checks it before anything runs, and the search again
under its folder's lock (fsd/tuning/search/runner.py), where a search started in between is caught."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fsd.layout import LEDGER
from fsd.tuning.plan.ledger import Ledger
from fsd.tuning.plan.spec import IDENTITY, SearchSpec, identity


class Refused(Exception):
    """The search folder cannot take this search; the message (one line) names the problem and the fix."""


def check_resume(spec: SearchSpec, resume: bool, flag: str = "--resume", ignore: tuple[str, ...] = ()) -> None:
    """A ledger to resume with --resume, none without, and a resumed search that agrees with the stored one (but
    for `ignore`). `flag` is what the errors blame: --resume, or --compare for a search it reuses.

    Raises:
        Refused: the first problem found.
    """
    try:
        ledger = Ledger(spec.folder)
    except (OSError, ValueError) as e:
        raise Refused(f"{Path(spec.folder) / LEDGER} cannot be read ({e}): restore it from a backup or use "
                      "another --storage") from None
    if ledger.exists and not resume:
        raise Refused(f"a search already exists in {spec.folder}: add --resume to continue it, or choose "
                      "another --storage")
    if not resume:
        return
    if not ledger.exists:
        raise Refused(f"--resume: no search to resume in {spec.folder}; run without --resume to start one")
    stored, current = ledger.data.get("search", {}), identity(spec)
    where = "" if flag == "--resume" else f" in {spec.folder}"
    for key in IDENTITY:
        if key not in stored or stored[key] == current[key] or key in ignore:
            continue
        if key == "extra":
            raise Refused(f"{flag}: --set gives {_sets(current[key])} but the stored search{where} used "
                          f"{_sets(stored[key])}; use the same --set values or another --storage")
        raise Refused(f"{flag}: {key} is {current[key]!r} but the stored search{where} used {stored[key]!r}; "
                      "use the same value or another --storage")
    check_checkpoints(spec, ledger)


def check_checkpoints(spec: SearchSpec, ledger: Ledger) -> None:
    """Every checkpoint a resumed stage may load is data: an old-format file that is more than tensors and
    plain values (a pickle planted in a shared storage folder would run code in each trial that resumes from
    it) stops the command before Ray starts."""
    from fsd.checkpoints import UnsafeCheckpoint, check_readable
    from fsd.tuning.plan.shared import stage_folder

    for name, record in ledger.records().items():
        if record.get("status") == "done" or not record.get("shared"):
            continue
        for folder in Path(stage_folder(spec.storage, spec.task, name, record["shared"])).glob("*/*/checkpoint_*"):
            try:
                check_readable(folder)
            except UnsafeCheckpoint as e:
                raise Refused(str(e)) from None


def _sets(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(values.items())) or "nothing"
