"""staged_folder: the target is replaced whole on success and left untouched on an error."""

from __future__ import annotations

import pytest

from spire_rt.staging import staged_folder


def test_success_replaces_the_target_whole(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with staged_folder(target) as staging:
        (staging / "new.txt").write_text("new")
        assert (target / "old.txt").is_file()  # nothing visible until the block ends
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging or retired folder left behind


def test_an_error_leaves_the_target_as_it_was(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), staged_folder(target) as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_missing_target_and_parent_are_created(tmp_path):
    target = tmp_path / "a" / "b"
    with staged_folder(target) as staging:
        (staging / "x").write_text("x")
    assert (target / "x").read_text() == "x"
