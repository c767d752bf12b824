"""Write a folder (or a file) beside its target, then swap it into place: a reader never sees half of it.

    with staged_folder(target) as staging:
        model.save_pretrained(staging)
    # target now holds exactly what was written; on an error it is left as it was

    with staged_file(path) as staging:   # the same for one file; staging keeps path's suffix
        image.save(staging)
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_folder(target: str | Path) -> Iterator[Path]:
    """A fresh folder beside `target`; on success it replaces `target` (whatever was there), on error it goes."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = sibling(target)
    staging.mkdir()
    try:
        yield staging
        retired = target.with_name(f".{target.name}.old")
        shutil.rmtree(retired, ignore_errors=True)
        if target.exists():
            target.rename(retired)  # two renames: the old folder stays whole until the new one is in place
        staging.rename(target)
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def staged_file(target: str | Path) -> Iterator[Path]:
    """A fresh path beside `target` with its suffix (so writers that go by the suffix still can); on success it
    replaces `target` in one rename, on error it goes and `target` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = sibling(target, target.suffix)
    staging.touch(exist_ok=False)
    try:
        yield staging
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)


def sibling(target: Path, suffix: str = "") -> Path:
    """An unused hidden name beside `target`. Made with plain mkdir / touch, not tempfile's, which create
    owner-only folders and files: what is written here becomes the user's output, with the permissions their
    umask gives every other file."""
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}{suffix}")
