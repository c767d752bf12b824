"""Backends behind the one `Backend` interface. PyTorch now; ONNX Runtime and TensorRT slot in here."""

from __future__ import annotations

import importlib.util

import torch

from ..errors import OptionError
from .base import Backend, resolve_device, resolve_dtype

BACKEND_NAMES = ("torch",)


def create_backend(name: str, model, device="cpu", dtype=None) -> Backend:
    if name == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend(model, device=device, dtype=dtype)
    raise OptionError(f"unknown backend {name!r}; available: {', '.join(BACKEND_NAMES)}")


def backend_status() -> dict[str, str]:
    """Each backend and whether it can run here, with the reason when it cannot (for `spire-rt info`)."""
    status = {"torch": "usable (cpu" + (", cuda" if torch.cuda.is_available() else "") + ")"}
    for name, module in (("onnxruntime", "onnxruntime"), ("tensorrt", "tensorrt")):
        status[name] = ("installed, not wired into the pipeline yet" if importlib.util.find_spec(module)
                        else f"not installed (pip install 'spire-rt[{'onnx' if name == 'onnxruntime' else name}]')")
    return status


__all__ = ["BACKEND_NAMES", "Backend", "backend_status", "create_backend", "resolve_device", "resolve_dtype"]
