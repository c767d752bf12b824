"""Package a trained SPIRE folder for shipping: the same diffusers-style layout, every tensor stored as fp16.

The backends cast to their own dtype when they load (fp32 on the CPU), so fp16 on disk only halves the size.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import ModelLoadError
from ..models.spire_model import SPIRE_FILE


def ship_fp16(source: Path, target: Path) -> Path:
    """Copy the SPIRE folder `source` to `target` (replacing it, keeping any MODEL_CARD.md) with fp16 weights."""
    source, target = Path(source), Path(target)
    if not (source / SPIRE_FILE).is_file():
        raise ModelLoadError(f"{source}: not a SPIRE folder (no {SPIRE_FILE})")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        shutil.copytree(source, staging, dirs_exist_ok=True)
        for weights in staging.rglob("*.safetensors"):
            tensors = {name: t.to(torch.float16) if t.is_floating_point() else t
                       for name, t in load_file(weights).items()}
            save_file(tensors, weights, metadata={"format": "pt"})
        card = target / "MODEL_CARD.md"
        if card.is_file():
            shutil.copy2(card, staging / "MODEL_CARD.md")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
