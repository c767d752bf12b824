"""The one interface every backend implements; the pipeline never asks which backend it has.

    backend.run(network, feeds) -> outputs      network in NETWORK_NAMES; feeds/outputs keyed by tensor name

Feeds and outputs are torch tensors on `backend.device`; floating-point outputs come back as float32 so the
samplers do their arithmetic at one precision whatever the network ran at.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch

from ..errors import OptionError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@runtime_checkable
class Backend(Protocol):
    name: str
    device: torch.device

    def run(self, network: str, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    def close(self) -> None: ...


def ordered_feeds(network: str, feeds: Mapping[str, torch.Tensor], known) -> list[torch.Tensor]:
    """The network's inputs in call order, with a clear error for an unknown network or a missing input."""
    from ..models.networks import NETWORK_INPUTS

    if network not in known:
        raise KeyError(f"unknown network {network!r}; known: {', '.join(known)}")
    missing = [name for name in NETWORK_INPUTS[network] if name not in feeds]
    if missing:
        raise KeyError(f"{network}: missing inputs {', '.join(missing)}")
    return [feeds[name] for name in NETWORK_INPUTS[network]]


def resolve_device(device: str | torch.device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise OptionError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError("device cuda was asked for but no CUDA GPU is usable here (see `spire-rt info`)")
    if device.type not in ("cpu", "cuda"):
        raise OptionError(f"device {device.type!r} is not supported; use cpu or cuda")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """fp32 on the CPU and fp16 on CUDA unless asked otherwise."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif dtype in DTYPES:
        resolved = DTYPES[dtype]
    else:
        raise OptionError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    if resolved not in DTYPES.values():
        raise OptionError(f"dtype {resolved} is not supported; use one of {', '.join(DTYPES)}")
    if resolved == torch.float16 and device.type == "cpu":
        raise OptionError("fp16 on the CPU is slow and inexact; use fp32 or bf16 there")
    return resolved
