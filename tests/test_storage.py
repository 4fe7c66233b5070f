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
