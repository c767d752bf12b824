"""Which implementation of the fused ops the patched model calls: the Triton kernels or their PyTorch references.

Both sets have the same signatures, so the patching logic is tested on the CPU with the references (fast) or with
the kernels under TRITON_INTERPRET=1 (slow, small shapes), and runs the kernels on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import OptionError

KERNEL_CHOICES = ("auto", "triton", "reference", "off")


@dataclass(frozen=True)
class FastOps:
    name: str
    modulate: Callable
    decoder_entry: Callable
    groupnorm_silu: Callable
    geglu: Callable

    @classmethod
    def triton(cls) -> FastOps:
        from ..kernels import decoder_entry, geglu, groupnorm_silu, modulate

        return cls("triton", modulate, decoder_entry, groupnorm_silu, geglu)

    @classmethod
    def reference(cls) -> FastOps:
        from ..kernels import decoder_entry_ref, geglu_ref, groupnorm_silu_ref, modulate_ref

        return cls("reference", modulate_ref, decoder_entry_ref, groupnorm_silu_ref, geglu_ref)


def resolve_ops(kernels: str, device: torch.device) -> FastOps | None:
    """auto: the Triton kernels on CUDA when Triton is installed, the references elsewhere; off: no patching."""
    from ..kernels import triton_available

    if kernels not in KERNEL_CHOICES:
        raise OptionError(f"kernels must be one of {', '.join(KERNEL_CHOICES)}, got {kernels!r}")
    if kernels == "off":
        return None
    if kernels == "reference":
        return FastOps.reference()
    if kernels == "triton":
        if not triton_available(device):
            raise OptionError(f"Triton kernels cannot run on {device} here (need triton and a CUDA device, or "
                              "TRITON_INTERPRET=1 on the CPU)")
        return FastOps.triton()
    # auto: the interpreter is for tests, so the CPU keeps the references even where it is switched on.
    return FastOps.triton() if device.type == "cuda" and triton_available(device) else FastOps.reference()
