"""staged_folder / staged_file: the target is replaced whole on success and left untouched on an error."""

from __future__ import annotations

import pytest

from spire_rt.staging import staged_file, staged_folder


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


def test_a_staged_file_keeps_the_suffix_and_replaces_the_target_whole(tmp_path):
    from PIL import Image

    target = tmp_path / "grid.png"
    target.write_text("old")
    with staged_file(target) as staging:
        assert staging.suffix == ".png" and staging.parent == tmp_path
        Image.new("RGB", (4, 2)).save(staging)  # PIL picks the format from the suffix
        assert target.read_text() == "old"  # nothing visible until the block ends
    assert Image.open(target).size == (4, 2)
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_an_error_leaves_the_file_as_it_was(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), staged_file(target) as staging:
        staging.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_what_is_staged_gets_the_permissions_of_any_new_file(tmp_path):
    """tempfile's owner-only 0600 / 0700 would leak into the user's outputs and model folders."""
    import os
    import stat

    previous = os.umask(0o022)
    try:
        with staged_file(tmp_path / "restored.png") as staging:
            staging.write_bytes(b"png")
        with staged_folder(tmp_path / "model") as staging:
            (staging / "config.json").write_text("{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "restored.png").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755
