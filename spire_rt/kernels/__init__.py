"""Triton kernels for SPIRE's hot paths, one op per file: the PyTorch reference `<op>_ref`, the kernel, the launcher.

    modulate        (1 + s*gamma) * f + s*beta                       the skip modulation
    decoder_entry   modulate + concat + GroupNorm + SiLU -> (x, y)   every resnet entry on the up path
    groupnorm_silu  GroupNorm (+ per-channel shift) (+ SiLU)         the other resnet entries, transformer norms
    geglu           a * GELU(g)                                      the transformer feed-forward gate

Attention stays with PyTorch's scaled_dot_product_attention: on Hopper it dispatches to flash / cuDNN kernels
that a Triton kernel matches at best, and SPIRE leaves nothing around attention worth fusing that channels-last
layout (free head split) and fused QKV projections do not already remove (spire_rt/fast/__init__.py says more).

The kernels run on CUDA tensors, or on CPU tensors when TRITON_INTERPRET=1 is set before this package is imported.
"""

from ._common import HAVE_TRITON, INTERPRET, triton_available
from .decoder_entry import decoder_entry, decoder_entry_ref
from .geglu import geglu, geglu_ref
from .groupnorm_silu import groupnorm_silu, groupnorm_silu_ref
from .modulate import modulate, modulate_ref

__all__ = ["HAVE_TRITON", "INTERPRET", "decoder_entry", "decoder_entry_ref", "geglu", "geglu_ref",
           "groupnorm_silu", "groupnorm_silu_ref", "modulate", "modulate_ref", "triton_available"]
