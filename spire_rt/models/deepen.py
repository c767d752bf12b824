"""One more resnet in a level of a SPIRE model's UNet, and in its adaptor's copy, without changing the output.

Capacity for a trained model to grow into (`spire-rt train --stage unpack --deepen-level L`), as
`FidelityBranch.widened` gives the fidelity branch width. Exact, with diffusers' blocks and `layers_per_block`
given per level:
- the new down resnet comes last in its level with its conv2 at zero, so it hands its input on, and the skip it
  adds is a copy of the level's old last skip;
- the level's up block pops its skips last first, so its first resnet now reads that copy (the adaptor's new head
  for it is the old head of the skip it copies), and a new second resnet reads the old last skip: its 1x1 shortcut
  passes the main path through and drops the skip, its conv2 is zero;
- the level's other up resnets read what they read before, one place later.
Only a level of plain resnets grows (tiny's full-resolution level): attention would need an identity start too.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.unets.unet_2d_blocks import DownBlock2D, UpBlock2D
from torch import nn

from ..errors import ModelLoadError
from .adaptor import SpireAdaptor, layers_per_level, skip_layout


def deepened(unet: UNet2DConditionModel, adaptor: SpireAdaptor, level: int
             ) -> tuple[UNet2DConditionModel, SpireAdaptor]:
    """New UNet and adaptor with one more resnet in `level` (0 = full latent resolution), same output."""
    config = {key: value for key, value in unet.config.items() if not key.startswith("_")}
    levels = len(config["block_out_channels"])
    if not 0 <= level < levels:
        raise ModelLoadError(f"--deepen-level {level}: the UNet has levels 0 .. {levels - 1}")
    down, up = unet.down_blocks[level], unet.up_blocks[levels - 1 - level]
    plain = type(down) is DownBlock2D and type(up) is UpBlock2D
    if not plain or any(resnet.output_scale_factor != 1 for resnet in [*down.resnets, *up.resnets]):
        raise ModelLoadError(f"--deepen-level {level}: level {level} has {type(down).__name__} / "
                             f"{type(up).__name__} blocks; only plain DownBlock2D / UpBlock2D resnets (no attention, "
                             "output scale 1) can start as an identity here")
    layers = layers_per_level(config)
    old_count = layers[level]
    layers[level] += 1
    new_config = {**config, "layers_per_block": layers}
    old_name = resnet_renaming(level, old_count, levels)

    grown_unet = UNet2DConditionModel(**new_config)
    pass_through_down(grown_unet.down_blocks[level].resnets[old_count])
    pass_through_up(grown_unet.up_blocks[levels - 1 - level].resnets[1])
    take_weights(grown_unet, unet.state_dict(), old_name)

    grown_adaptor = SpireAdaptor(unet_config=new_config, condition_channels=adaptor.config.condition_channels)
    pass_through_down(grown_adaptor.down_blocks[level].resnets[old_count])
    heads = skip_head_sources(skip_layout(config), level)

    def adaptor_name(name: str) -> str | None:
        head = re.match(r"skip_heads\.(\d+)\.(.*)", name)
        if head is None:
            return old_name(name)
        source = heads[int(head.group(1))]
        return None if source is None else f"skip_heads.{source}.{head.group(2)}"

    take_weights(grown_adaptor, adaptor.state_dict(), adaptor_name)
    return like(grown_unet, unet), like(grown_adaptor, adaptor)


def like(grown: nn.Module, original: nn.Module) -> nn.Module:
    """`grown` on the original's device, in its dtype and mode."""
    parameter = next(original.parameters())
    return grown.to(parameter.device, parameter.dtype).train(original.training)


def resnet_renaming(level: int, old_count: int, levels: int) -> Callable[[str], str | None]:
    """The old model's name of each new tensor: None for the new layers (they keep their own start)."""
    down, up = f"down_blocks.{level}.resnets.", f"up_blocks.{levels - 1 - level}.resnets."

    def old_name(name: str) -> str | None:
        for prefix, old_index in ((down, lambda j: j if j < old_count else None),
                                  (up, lambda k: 0 if k == 0 else None if k == 1 else k - 1)):
            match = re.match(re.escape(prefix) + r"(\d+)\.(.*)", name)
            if match:
                index = old_index(int(match.group(1)))
                return None if index is None else f"{prefix}{index}.{match.group(2)}"
        return name

    return old_name


def skip_head_sources(old_layout: list[tuple[int, int]], level: int) -> list[int | None]:
    """For each new skip head, the old head it takes over (None: a new one, at zero). The level's new last skip
    copies the old last one and is read by that skip's old reader; the old last skip is now read by the
    pass-through resnet, which ignores it."""
    last = max(index for index, (skip_level, _) in enumerate(old_layout) if skip_level == level)
    return [*range(last), None, last, *range(last + 1, len(old_layout))]


def pass_through_down(resnet: nn.Module) -> None:
    with torch.no_grad():
        resnet.conv2.weight.zero_()
        resnet.conv2.bias.zero_()


def pass_through_up(resnet: nn.Module) -> None:
    """Output the main path (the first `out` of its input channels) as it came in; drop the skip."""
    pass_through_down(resnet)
    shortcut = resnet.conv_shortcut
    with torch.no_grad():
        shortcut.weight.zero_()
        shortcut.weight[:, : shortcut.out_channels, 0, 0] = torch.eye(shortcut.out_channels)
        shortcut.bias.zero_()


def take_weights(module: nn.Module, old_state: dict, old_name: Callable[[str], str | None]) -> None:
    state = module.state_dict()
    for name in state:
        source = old_name(name)
        if source is not None:
            state[name] = old_state[source]
    module.load_state_dict(state)
