"""Package a trained SPIRE folder for shipping: the same diffusers-style layout, every tensor stored as fp16.

The backends cast to their own dtype when they load (fp32 on the CPU), so fp16 on disk only halves the size.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import ModelLoadError
from ..models.spire_model import SPIRE_FILE, checked_restore_defaults, write_json
from ..staging import staged_folder


def ship_fp16(source: Path, target: Path, vae: Path | None = None, restore_defaults: dict | None = None,
              fidelity: Path | None = None) -> Path:
    """Copy the SPIRE folder `source` to `target` (replacing it, keeping any MODEL_CARD.md) with fp16 weights.

    `vae`: a VAE folder to ship instead of source's own, e.g. RUN/vae after the decoder stage refined it while
    the adaptor trained. Its encoder must be the one the adaptor learned from, or the latents would not match.
    `fidelity`: a fidelity branch folder (RUN/fidelity) to ship with it, trained with that decoder.
    `restore_defaults`: options to record over the adaptor stage's own (e.g. a strength chosen on validation
    images).
    """
    source, target = Path(source), Path(target)
    if not (source / SPIRE_FILE).is_file():
        raise ModelLoadError(f"{source}: not a SPIRE folder (no {SPIRE_FILE})")
    if vae is not None:
        check_same_encoder(Path(vae), source / "vae")
    card = target / "MODEL_CARD.md"
    kept_card = card.read_bytes() if card.is_file() else None
    with staged_folder(target) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True)
        if vae is not None:
            shutil.rmtree(staging / "vae")
            shutil.copytree(vae, staging / "vae")
        if fidelity is not None:
            shutil.rmtree(staging / "fidelity", ignore_errors=True)
            shutil.copytree(fidelity, staging / "fidelity")
        if restore_defaults:
            info = json.loads((staging / SPIRE_FILE).read_text(encoding="utf-8"))
            merged = {**info.get("restore_defaults", {}), **restore_defaults}
            info["restore_defaults"] = checked_restore_defaults(merged, source)
            write_json(staging / SPIRE_FILE, info)
        for config in staging.rglob("config.json"):
            write_json(config, without_local_paths(json.loads(config.read_text(encoding="utf-8"))))
        for weights in staging.rglob("*.safetensors"):
            tensors = {name: t.to(torch.float16) if t.is_floating_point() else t
                       for name, t in load_file(weights).items()}
            save_file(tensors, weights, metadata={"format": "pt"})
        if kept_card is not None:
            (staging / "MODEL_CARD.md").write_bytes(kept_card)
    return target


def without_local_paths(config):
    """A config without diffusers' `_name_or_path` (at any depth): the training machine's folders mean nothing to a
    user, and loading never reads them."""
    if isinstance(config, dict):
        return {key: without_local_paths(value) for key, value in config.items() if key != "_name_or_path"}
    return config


def check_same_encoder(vae: Path, reference: Path) -> None:
    """Refuse a VAE whose encoder (or latent scaling) differs from the one the model was trained with."""
    weights = "diffusion_pytorch_model.safetensors"
    for folder in (vae, reference):
        if not (folder / weights).is_file():
            raise ModelLoadError(f"{folder}: no VAE weights ({weights})")
    changed = differing_tensors(load_file(vae / weights), load_file(reference / weights), ("encoder.", "quant_conv."))
    scaling = []
    for folder in (vae, reference):
        try:
            scaling.append(json.loads((folder / "config.json").read_text(encoding="utf-8"))["scaling_factor"])
        except (OSError, ValueError, KeyError) as error:
            raise ModelLoadError(f"{folder / 'config.json'}: no readable VAE scaling_factor ({error})") from None
    if changed or scaling[0] != scaling[1]:
        what = f"{len(changed)} encoder tensors differ" if changed else "its scaling factor differs"
        raise ModelLoadError(f"{vae}: not the VAE the model was trained with ({what}); only a decoder-stage "
                             "refinement of it may stand in for it")


def differing_tensors(ours: dict, theirs: dict, prefixes: tuple[str, ...] = ("",)) -> list[str]:
    """The names under `prefixes` in the state dict `theirs` that `ours` lacks or holds with other values."""
    return [name for name, tensor in theirs.items() if name.startswith(prefixes)
            and (name not in ours or not torch.equal(ours[name], tensor.to(ours[name].device)))]


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
