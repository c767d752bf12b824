"""Give a trained SPIRE model's UNet (and its adaptor copy) one more layer in one level, without changing its output.

    python grow_depth.py RUN NEW_RUN [--level 0]

RUN is a run folder (RUN/model from the adaptor stage, RUN/vae and RUN/fidelity from the decoder stage); NEW_RUN
is made as `spire-rt train --stage unpack` makes one, from the grown model, plus RUN's decoder checkpoint, so the
adaptor stage (`--resume --train-unet`) and the decoder stage (`--resume`) carry it on.

Why this is exact (diffusers' blocks, `layers_per_block` per level):
- the new down resnet comes last in its level, its conv2 at zero: it hands on its input, and so does the skip it
  adds, which is a copy of the level's last skip;
- the up block at that level pops its skips last first, so its first resnet now reads the new copy (the old first
  resnet, unchanged, and the adaptor's new head is the old head of the skip it copies), and a new second resnet
  reads the old last skip: its 1x1 shortcut passes the main path through and drops the skip, its conv2 is zero;
- the rest of the level's up resnets read what they read before, one place later.
Only a level without attention is grown (the full-resolution level of tiny): attention layers would need their
own identity start.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from spire_rt.models.adaptor import SpireAdaptor, skip_layout
from spire_rt.models.modulated_unet import unet_forward_modulated
from spire_rt.models.spire_model import load_component, load_fidelity, load_folder
from spire_rt.training.unpack import unpack_model


def layers_per_level(config) -> list[int]:
    layers, levels = config["layers_per_block"], len(config["block_out_channels"])
    return [layers] * levels if isinstance(layers, int) else list(layers)


def grown_config(config, level: int) -> dict:
    layers = layers_per_level(config)
    layers[level] += 1
    return {**{k: v for k, v in config.items() if not k.startswith("_")}, "layers_per_block": layers}


def moved_resnet(name: str, block: str, remap) -> str | None:
    """`name` with its resnet index in `block` (e.g. "down_blocks.0.resnets.") mapped by remap (None: no such
    resnet in the old model)."""
    match = re.match(re.escape(block) + r"(\d+)\.(.*)", name)
    if not match:
        return name
    old = remap(int(match.group(1)))
    return None if old is None else f"{block}{old}.{match.group(2)}"


def old_name(name: str, level: int, old_layers: int, levels: int) -> str | None:
    """The old model's name for the new model's tensor `name` (None for the new layers)."""
    down, up = f"down_blocks.{level}.resnets.", f"up_blocks.{levels - 1 - level}.resnets."
    name = moved_resnet(name, down, lambda j: j if j < old_layers else None)
    if name is None:
        return None
    return moved_resnet(name, up, lambda k: 0 if k == 0 else None if k == 1 else k - 1)


def skip_head_source(level: int, old_layout, new_layout) -> list[int | None]:
    """For each new skip head, the old head it takes over (None: a new head at zero). The level's new last skip
    copies the old last one, whose old reader is now the new skip's reader; the old last skip's new reader (the
    pass-through resnet) ignores it."""
    last_old = max(i for i, (lvl, _) in enumerate(old_layout) if lvl == level)  # the level's last resnet
    sources = list(range(last_old)) + [None, last_old] + list(range(last_old + 1, len(old_layout)))
    assert len(sources) == len(new_layout)
    return sources


def identity_down(resnet) -> None:
    torch.nn.init.zeros_(resnet.conv2.weight)
    torch.nn.init.zeros_(resnet.conv2.bias)


def identity_up(resnet) -> None:
    """Pass the main path (the first `out` input channels) through, drop the skip."""
    identity_down(resnet)
    weight = resnet.conv_shortcut.weight
    with torch.no_grad():
        weight.zero_()
        weight[:, : weight.shape[0], 0, 0] = torch.eye(weight.shape[0])
        resnet.conv_shortcut.bias.zero_()


def grow(unet: UNet2DConditionModel, adaptor: SpireAdaptor, level: int):
    config = dict(unet.config)
    levels = len(config["block_out_channels"])
    old_layers = layers_per_level(config)[level]
    if unet.down_blocks[level].__class__.__name__ != "DownBlock2D":
        raise SystemExit(f"level {level} has attention; only a level without it grows exactly")
    new_config = grown_config(config, level)
    new_unet = UNet2DConditionModel(**new_config)
    up = new_unet.up_blocks[levels - 1 - level]
    identity_down(new_unet.down_blocks[level].resnets[old_layers])
    identity_up(up.resnets[1])
    take(new_unet, unet.state_dict(), lambda n: old_name(n, level, old_layers, levels))

    new_adaptor = SpireAdaptor(unet_config=new_config, condition_channels=adaptor.config.condition_channels)
    identity_down(new_adaptor.down_blocks[level].resnets[old_layers])
    sources = skip_head_source(level, skip_layout(config), skip_layout(new_config))

    def adaptor_name(name):
        match = re.match(r"skip_heads\.(\d+)\.(.*)", name)
        if match:
            source = sources[int(match.group(1))]
            return None if source is None else f"skip_heads.{source}.{match.group(2)}"
        return old_name(name, level, old_layers, levels)

    take(new_adaptor, adaptor.state_dict(), adaptor_name)
    return new_unet, new_adaptor


def take(module, old_state: dict, old_name_of) -> None:
    state = module.state_dict()
    for name in state:
        source = old_name_of(name)
        if source is not None:
            state[name] = old_state[source]
    module.load_state_dict(state)


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
    unet, adaptor = grow(model.unet, model.controlnet, args.level)
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
