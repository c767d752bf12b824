"""Write a folder beside its target, then swap it into place: a reader never sees half of it.

    with staged_folder(target) as staging:
        model.save_pretrained(staging)
    # target now holds exactly what was written; on an error it is left as it was
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_folder(target: str | Path) -> Iterator[Path]:
    """A fresh folder beside `target`; on success it replaces `target` (whatever was there), on error it goes."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
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
