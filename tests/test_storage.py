"""fsd/storage.py: whole-or-absent files and folders, content keys."""

import hashlib

import pytest

from fsd.storage import atomic_file, atomic_folder, content_key, write_text


def test_content_key_is_the_sha256_of_the_text_or_of_sorted_json():
    assert content_key("abc", 8) == hashlib.sha256(b"abc").hexdigest()[:8]
    value = {"b": 1, "a": [1, 2], "c": None}
    assert content_key(value) == hashlib.sha256(b'{"a": [1, 2], "b": 1, "c": null}').hexdigest()[:16]
    assert content_key({"a": [1, 2], "c": None, "b": 1}) == content_key(value)  # key order does not matter
    assert content_key({"p": (1, 2)}) == content_key({"p": [1, 2]}) != content_key({"p": [2, 1]})
    assert content_key({"x": object}, 40) == content_key({"x": str(object)}, 40)  # not JSON: its str


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "sub" / "record.json"
    write_text(path, "old")
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and sorted(p.name for p in path.parent.iterdir()) == ["record.json"]
    with atomic_file(path) as tmp:
        assert tmp.parent == path.parent and tmp != path
        tmp.write_text("new")
        assert path.read_text() == "old"  # not before the block ends
    assert path.read_text() == "new" and len(list(path.parent.iterdir())) == 1


def test_a_folder_appears_whole_and_a_finished_one_is_kept_unless_replaced(tmp_path):
    final = tmp_path / "cache" / "key"
    with pytest.raises(ValueError), atomic_folder(final) as tmp:
        (tmp / "part").write_text("1")
        raise ValueError
    assert not final.exists() and list(final.parent.iterdir()) == []
    with atomic_folder(final) as tmp:
        (tmp / "a").write_text("first")
    with atomic_folder(final) as tmp:  # another writer of the same content finished first: theirs stays
        (tmp / "a").write_text("second")
    assert (final / "a").read_text() == "first" and [p.name for p in final.parent.iterdir()] == ["key"]
    with atomic_folder(final, replace=True) as tmp:  # a left-over that is not whole is replaced
        (tmp / "b").write_text("third")
    assert sorted(p.name for p in final.iterdir()) == ["b"] and [p.name for p in final.parent.iterdir()] == ["key"]


_BUILDER = """
import sys, time
from pathlib import Path
from fsd.logs import show_console
from fsd.storage import one_builder
show_console()
target = Path(sys.argv[1])
with one_builder(target, "thing"):
    print("inside", flush=True)
    if not target.exists():
        Path(sys.argv[2]).touch()  # this process is the builder
        time.sleep(float(sys.argv[3]))
        target.write_text("built")
"""


def _builder(tmp_path, name, sleep, **kw):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    return subprocess.Popen([sys.executable, "-c", _BUILDER, str(tmp_path / "thing"), str(tmp_path / name),
                             str(sleep)], cwd=root, stdout=subprocess.PIPE, text=True, **kw)


def test_one_builder_builds_once_the_other_waits_and_no_lock_is_left(tmp_path):
    import subprocess
    import time

    first = _builder(tmp_path, "built-by-first", 3)
    assert first.stdout.readline().strip() == "inside"  # the first holds the lock now
    start = time.monotonic()
    second = _builder(tmp_path, "built-by-second", 0, stderr=subprocess.STDOUT)  # the console's line: stderr
    out, _ = second.communicate(timeout=60)
    first.communicate(timeout=60)
    assert "thing: another process is building it" in out and time.monotonic() - start > 1.5
    assert (tmp_path / "built-by-first").exists() and not (tmp_path / "built-by-second").exists()
    assert (tmp_path / "thing").read_text() == "built"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["built-by-first", "thing"]  # no lock left beside it


def test_one_builder_that_dies_releases_the_lock_and_leaves_it_for_the_next(tmp_path):
    import signal

    from fsd.storage import one_builder

    first = _builder(tmp_path, "built-by-first", 60)
    assert first.stdout.readline().strip() == "inside"
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert (tmp_path / "thing.lock").exists() and not (tmp_path / "thing").exists()
    import logging

    from fsd.logs import console

    said: list[str] = []
    keep = logging.Handler()
    keep.emit = lambda record: said.append(record.getMessage())
    console.addHandler(keep)
    level = console.level
    console.setLevel(logging.INFO)
    try:
        with one_builder(tmp_path / "thing", "thing"):  # at once: the kernel dropped the dead one's lock
            (tmp_path / "thing").write_text("built")
    finally:
        console.removeHandler(keep)
        console.setLevel(level)
    assert said == [] and not (tmp_path / "thing.lock").exists()
    with pytest.raises(RuntimeError), one_builder(tmp_path / "other", "other"):
        raise RuntimeError("the build failed")
    assert (tmp_path / "other.lock").exists()  # kept: the next builders queue on this file


def test_files_and_folders_written_whole_are_readable_as_the_umask_allows(tmp_path):
    import os

    from fsd.storage import atomic_folder, write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "report.html", "<html></html>")
        with atomic_folder(tmp_path / "teacher") as folder:
            (folder / "config.json").write_text("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "report.html").stat().st_mode & 0o777 == 0o644  # mkstemp alone gives 0600
    assert (tmp_path / "teacher").stat().st_mode & 0o777 == 0o755  # mkdtemp alone gives 0700
