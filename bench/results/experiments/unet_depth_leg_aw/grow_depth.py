"""Give a trained SPIRE model's UNet (and its adaptor copy) one more layer in one level, without changing its output.

    python grow_depth.py RUN NEW_RUN [--level 0]

RUN is a run folder (RUN/model from the adaptor stage, RUN/vae and RUN/fidelity from the decoder stage); NEW_RUN
is made as `spire-rt train --stage unpack` makes one, from the grown model in fp32, plus RUN's decoder checkpoint,
so the adaptor stage (`--resume --train-unet`) and the decoder stage (`--resume`) carry it on.

Leg (aw) ran this script with the growing written out in it; the same code now lives in spire_rt/models/deepen.py
(`deepened`), which this script calls, and `spire-rt train --stage unpack --deepen-level 0` does the growing
from a shipped (fp16) folder. Why the grown model's output is unchanged: that module's docstring.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from spire_rt.models.deepen import deepened
from spire_rt.models.modulated_unet import unet_forward_modulated
from spire_rt.models.spire_model import load_component, load_fidelity, load_folder
from spire_rt.training.unpack import unpack_model


def check_same_output(old_unet, old_adaptor, new_unet, new_adaptor) -> float:
    generator = torch.Generator().manual_seed(0)
    channels = old_unet.config.in_channels
    sample = torch.randn(2, channels, 32, 32, generator=generator)
    condition = torch.randn(2, channels, 32, 32, generator=generator)
    width = old_unet.config.cross_attention_dim
    text = torch.randn(2, 77, width, generator=generator)
    timestep, strength = torch.tensor([59]), torch.tensor([1.0])
    outputs = []
    with torch.no_grad():
        for unet, adaptor in ((old_unet, old_adaptor), (new_unet, new_adaptor)):
            modulations = adaptor(sample, timestep, condition, text)
            outputs.append(unet_forward_modulated(unet, sample, timestep, text, modulations, strength))
    return float((outputs[0] - outputs[1]).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("new_run", type=Path)
    parser.add_argument("--level", type=int, default=0)
    args = parser.parse_args()

    model = load_folder(args.run / "model")
    unet, adaptor = deepened(model.unet, model.controlnet, args.level)
    difference = check_same_output(model.unet, model.controlnet, unet, adaptor)
    print(f"grown: layers_per_block {unet.config.layers_per_block}; max output difference {difference:.2e}")
    if difference > 1e-5:
        raise SystemExit("the grown model does not give the same output")
    parameters = sum(p.numel() for p in unet.parameters()) + sum(p.numel() for p in adaptor.parameters())
    print(f"UNet + adaptor parameters: {parameters / 1e6:.2f} M")
    model.unet, model.controlnet = unet, adaptor
    model.vae = load_component(args.run / "vae", "vae")  # the decoder stage's, as ship takes it
    model.fidelity = load_fidelity(args.run, model.vae)
    staging = args.new_run.with_name(args.new_run.name + ".grown_model")
    model.save(staging)
    unpack_model(staging, args.new_run)
    shutil.rmtree(staging)
    shutil.copy2(args.run / "decoder.ckpt", args.new_run / "decoder.ckpt")
    print(f"wrote {args.new_run}")


if __name__ == "__main__":
    main()
