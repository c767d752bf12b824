"""Patch a loaded SPIRE model so its modulated UNet forward (and the adaptor, and the VAE) run the fused ops.

Only instance attributes change: `Patches.undo()` restores every one, and the weights are never touched (except
for the fused QKV projections, which are added beside the originals). What changes:

- `DenoiserNet.modulate_fn` returns a `PendingSkip` (feature, modulation, strength) instead of the product, so
  the modulation happens inside the decoder-entry kernel that consumes the skip (SPIRE.md "Modulation fusion").
  `unet_forward_modulated` itself is unchanged: it hands the pending skips and the pending mid output to the up
  blocks, which are patched to take them.
- UNet up blocks (diffusers `UpBlock2D`, `CrossAttnUpBlock2D`): each resnet's `cat(h, skip) -> norm1 -> SiLU` is
  one `decoder_entry` call, which also writes the concatenation for the resnet's shortcut.
- `ResnetBlock2D` (UNet, adaptor, VAE): `norm1 -> SiLU` and `(h + temb) -> norm2 -> SiLU` are `groupnorm_silu`
  calls (the time embedding enters as a per-channel shift, the sum is never written).
- The GroupNorm in front of each transformer, and the final `conv_norm_out -> conv_act`: `groupnorm_silu`.
- `GEGLU`: the projection, then the `geglu` kernel.
- `Transformer2DModel`'s output drops diffusers' `.contiguous()`: in channels-last the head split and merge are
  then free views instead of two transposing copies per transformer.
- Optionally (`overlap`), `DenoiserNet.forward` runs the adaptor on a second CUDA stream beside the UNet's
  encoder, and broadcasts the guided step's modulations instead of repeating them (overlap.py).
- Attention: fused QKV (self) and KV (cross) projections, diffusers' `FusedAttnProcessor2_0`; the attention itself
  stays PyTorch's scaled_dot_product_attention (flash / cuDNN kernels on Hopper).

Modules of an unexpected kind or configuration are left as they are, so the patched model computes the same
function as the unpatched one whatever diffusers hands it.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.models.activations import GEGLU
from diffusers.models.attention_processor import Attention, FusedAttnProcessor2_0
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from diffusers.models.unets.unet_2d_blocks import CrossAttnUpBlock2D, UpBlock2D
from torch import nn

from ..models.networks import DenoiserNet
from .ops import FastOps
from .overlap import overlapped_forward


@dataclass
class PendingSkip:
    """A skip feature whose modulation `(1 + s*gamma) f + s*beta` is left to the kernel that consumes it.

    Deliberately not a tensor: anything but a patched up block that receives one fails loudly.
    """

    feature: torch.Tensor
    modulation: torch.Tensor
    strength: torch.Tensor


def deferred_modulate(feature: torch.Tensor, modulation: torch.Tensor, strength: torch.Tensor) -> PendingSkip:
    return PendingSkip(feature, modulation, strength)


class Patches:
    """The record of every attribute patched, newest last, so `undo()` restores them in reverse order."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []
        self.counts: dict[str, int] = {}

    def method(self, module: nn.Module, name: str, function: Callable, kind: str) -> None:
        """Replace `module.<name>` (a method) with `function` bound to the module, on this instance only."""
        had = name in module.__dict__
        old = module.__dict__.get(name)
        module.__dict__[name] = types.MethodType(function, module)
        self._undo.append(lambda: module.__dict__.__setitem__(name, old) if had else module.__dict__.pop(name))
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def attribute(self, owner, name: str, value, kind: str) -> None:
        old = getattr(owner, name)
        setattr(owner, name, value)
        self._undo.append(lambda: setattr(owner, name, old))
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def add_undo(self, undo: Callable[[], None], kind: str) -> None:
        self._undo.append(undo)
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()
        self.counts = {}


def patch_model(model, networks: dict[str, nn.Module], ops: FastOps, fuse_qkv: bool = True,
                overlap: bool = False) -> Patches:
    """Patch the model's UNet, adaptor and VAE and the denoiser networks made from it (see the module docstring).

    `overlap` also runs each denoiser's adaptor beside the UNet's encoder, on a second CUDA stream (overlap.py).
    """
    patches = Patches()
    for module in (model.unet, model.controlnet, model.vae):
        patch_resnets(module, ops, patches)
        patch_transformers(module, ops, patches)
        patch_geglu(module, ops, patches)
        for parent in module.modules():
            fuse_norm_activation(parent, ops, patches)
    if fuse_qkv:
        for module in (model.unet, model.controlnet):
            fuse_qkv_projections(module, patches)
    deferred = patch_up_blocks(model.unet, ops, patches)
    for net in networks.values():
        if isinstance(net, DenoiserNet):
            # Without every up block patched, nothing could consume a PendingSkip: modulate eagerly instead.
            patches.attribute(net, "modulate_fn", deferred_modulate if deferred else ops.modulate, "modulate_fn")
            if overlap:
                device = next(model.unet.parameters()).device
                side = torch.cuda.Stream(device) if device.type == "cuda" else None
                patches.method(net, "forward", overlapped_forward(side), "overlap")
    return patches


# --- resnets ---------------------------------------------------------------------------------------------------

def resnet_supported(resnet: nn.Module) -> bool:
    if type(resnet) is not ResnetBlock2D:
        return False
    # "group" (the VAE decoder's) ignores temb: the same computation when there is no time projection either.
    norm = resnet.time_embedding_norm
    plain = norm == "default" or (norm == "group" and resnet.time_emb_proj is None)
    return (plain and resnet.upsample is None
            and resnet.downsample is None and isinstance(resnet.nonlinearity, nn.SiLU)
            and isinstance(resnet.norm1, nn.GroupNorm) and isinstance(resnet.norm2, nn.GroupNorm)
            and resnet.norm1.affine and resnet.norm2.affine)


def resnet_body(resnet: ResnetBlock2D, x: torch.Tensor, activated: torch.Tensor, temb, ops: FastOps):
    """ResnetBlock2D.forward after `norm1 -> SiLU`: `activated` is SiLU(norm1(x)), x feeds the shortcut."""
    h = resnet.conv1(activated)
    shift = None
    if temb is not None and resnet.time_emb_proj is not None:
        shift = resnet.time_emb_proj(temb if resnet.skip_time_act else resnet.nonlinearity(temb))
    norm = resnet.norm2
    h = ops.groupnorm_silu(h, norm.weight, norm.bias, norm.num_groups, norm.eps, shift=shift, silu=True)
    h = resnet.conv2(resnet.dropout(h))
    shortcut = resnet.conv_shortcut(x) if resnet.conv_shortcut is not None else x
    h = h + shortcut
    return h if resnet.output_scale_factor == 1 else h / resnet.output_scale_factor


def patch_resnets(root: nn.Module, ops: FastOps, patches: Patches) -> None:
    def forward(self, input_tensor, temb=None, *args, **kwargs):
        if temb is not None and self.time_emb_proj is None:  # diffusers would add an unprojected temb
            return type(self).forward(self, input_tensor, temb, *args, **kwargs)
        norm = self.norm1
        activated = ops.groupnorm_silu(input_tensor, norm.weight, norm.bias, norm.num_groups, norm.eps, silu=True)
        return resnet_body(self, input_tensor, activated, temb, ops)

    for module in root.modules():
        if resnet_supported(module):
            patches.method(module, "forward", forward, "resnet")


# --- the up path -----------------------------------------------------------------------------------------------

def up_block_supported(block: nn.Module) -> bool:
    freeu = all(getattr(block, name, None) for name in ("s1", "s2", "b1", "b2"))
    return (type(block) in (UpBlock2D, CrossAttnUpBlock2D) and not freeu
            and all(resnet_supported(resnet) for resnet in block.resnets))


def materialize(value, ops: FastOps) -> torch.Tensor:
    if isinstance(value, PendingSkip):
        return ops.modulate(value.feature, value.modulation, value.strength)
    return value


def patch_up_blocks(unet: nn.Module, ops: FastOps, patches: Patches) -> bool:
    """Patch every up block; True when all of them were (then they can take PendingSkips)."""

    def forward(self, hidden_states, res_hidden_states_tuple, temb=None, encoder_hidden_states=None,
                cross_attention_kwargs=None, upsample_size=None, attention_mask=None, encoder_attention_mask=None,
                *args, **kwargs):
        h = materialize(hidden_states, ops)  # the mid block's output arrives pending too
        skips = list(res_hidden_states_tuple)
        attentions = getattr(self, "attentions", None) or [None] * len(self.resnets)
        for resnet, attention in zip(self.resnets, attentions):
            skip = skips.pop()
            norm = resnet.norm1
            if isinstance(skip, PendingSkip):
                x, activated = ops.decoder_entry(h, skip.feature, skip.modulation, skip.strength, norm.weight,
                                                 norm.bias, norm.num_groups, norm.eps)
            else:
                x, activated = ops.decoder_entry(h, skip, None, 0.0, norm.weight, norm.bias, norm.num_groups,
                                                 norm.eps)
            h = resnet_body(resnet, x, activated, temb, ops)
            if attention is not None:
                h = attention(h, encoder_hidden_states=encoder_hidden_states,
                              cross_attention_kwargs=cross_attention_kwargs, attention_mask=attention_mask,
                              encoder_attention_mask=encoder_attention_mask, return_dict=False)[0]
        if self.upsamplers is not None:
            for upsampler in self.upsamplers:
                h = upsampler(h, upsample_size)
        return h

    blocks = list(unet.up_blocks)
    supported = [up_block_supported(block) for block in blocks]
    for block, ok in zip(blocks, supported):
        if ok:
            patches.method(block, "forward", forward, "up_block")
    return all(supported)


# --- transformers, feed-forward, norms, attention ---------------------------------------------------------------

def group_norm_forward(ops: FastOps, silu: bool):
    def forward(self, x):
        if x.dim() != 4:
            return nn.functional.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return ops.groupnorm_silu(x, self.weight, self.bias, self.num_groups, self.eps, silu=silu)

    return forward


def transformer_output(self, hidden_states, residual, batch_size, height, width, inner_dim):
    """Transformer2DModel._get_output_for_continuous_inputs without the copy to NCHW."""
    if not self.use_linear_projection:
        hidden_states = hidden_states.reshape(batch_size, height, width, inner_dim).permute(0, 3, 1, 2)
        hidden_states = self.proj_out(hidden_states)
    else:
        hidden_states = self.proj_out(hidden_states)
        hidden_states = hidden_states.reshape(batch_size, height, width, inner_dim).permute(0, 3, 1, 2)
    return hidden_states + residual


def patch_transformers(root: nn.Module, ops: FastOps, patches: Patches) -> None:
    for module in root.modules():
        if type(module) is Transformer2DModel and module.is_input_continuous:
            patches.method(module, "_get_output_for_continuous_inputs", transformer_output, "transformer_output")
            if type(module.norm) is nn.GroupNorm and module.norm.affine:
                patches.method(module.norm, "forward", group_norm_forward(ops, silu=False), "group_norm")


def patch_geglu(root: nn.Module, ops: FastOps, patches: Patches) -> None:
    def forward(self, hidden_states, *args, **kwargs):
        return ops.geglu(self.proj(hidden_states))

    for module in root.modules():
        if type(module) is GEGLU:
            patches.method(module, "forward", forward, "geglu")


def fuse_norm_activation(parent: nn.Module, ops: FastOps, patches: Patches,
                         norm_name: str = "conv_norm_out", act_name: str = "conv_act") -> None:
    """`parent.conv_act(parent.conv_norm_out(h))` (UNet, VAE encoder and decoder) as one groupnorm_silu."""
    norm, act = getattr(parent, norm_name, None), getattr(parent, act_name, None)
    if type(norm) is nn.GroupNorm and norm.affine and isinstance(act, nn.SiLU):
        patches.method(norm, "forward", group_norm_forward(ops, silu=True), "norm_out")
        patches.attribute(parent, act_name, nn.Identity(), "norm_out_act")


def fuse_qkv_projections(root: nn.Module, patches: Patches) -> None:
    """diffusers' fused projections on every plain attention module: one GEMM for QKV (self) or KV (cross)."""
    for module in root.modules():
        if type(module) is not Attention or getattr(module, "fused_projections", False):
            continue
        if type(module.processor).__name__ != "AttnProcessor2_0" or getattr(module, "add_q_proj", None) is not None:
            continue
        old_processor = module.processor
        module.fuse_projections(fuse=True)
        module.set_processor(FusedAttnProcessor2_0())

        def undo(module=module, old_processor=old_processor):
            module.set_processor(old_processor)
            for name in ("to_qkv", "to_kv"):
                if name in module._modules:
                    del module._modules[name]
            module.fused_projections = False

        patches.add_undo(undo, "fused_qkv")
