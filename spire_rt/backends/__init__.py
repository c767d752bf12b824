"""Backends behind the one `Backend` interface: PyTorch and ONNX Runtime; TensorRT slots in here."""

from __future__ import annotations

import importlib.util

import torch

from ..errors import OptionError
from .base import Backend, resolve_device, resolve_dtype

BACKEND_NAMES = ("torch", "onnxruntime", "torch-fast")


def default_backend() -> str:
    """ONNX Runtime on a machine without a CUDA GPU (where it is installed); PyTorch otherwise."""
    if not torch.cuda.is_available() and importlib.util.find_spec("onnxruntime") is not None:
        return "onnxruntime"
    return "torch"


def create_backend(name: str | None, model, device="cpu", dtype=None, **options) -> Backend:
    """The named backend (None: `default_backend()`); `options` go to the backend (ONNX Runtime's cache, ...)."""
    name = name or default_backend()
    if name == "torch":
        from .torch_backend import TorchBackend

        unknown = set(options) - {"threads"}
        if unknown:
            raise OptionError(f"the torch backend takes only `threads` ({', '.join(sorted(unknown))} given)")
        return TorchBackend(model, device=device, dtype=dtype, **options)
    if name == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model, device=device, dtype=dtype, **options)
    if name == "torch-fast":
        from ..fast.backend import FastTorchBackend

        if "threads" in options:
            raise OptionError("threads: the torch-fast backend runs on CUDA; threads apply to onnxruntime and torch")
        return FastTorchBackend(model, device=device, dtype=dtype, **options)
    raise OptionError(f"unknown backend {name!r}; available: {', '.join(BACKEND_NAMES)}")


def backend_status() -> dict[str, str]:
    """Each backend and whether it can run here, with the reason when it cannot (for `spire-rt info`)."""
    default = default_backend()
    status = {"torch": "usable (cpu" + (", cuda" if torch.cuda.is_available() else "") + ")"}
    if importlib.util.find_spec("onnxruntime"):
        import onnxruntime

        providers = ", ".join(p.removesuffix("ExecutionProvider").lower() for p in onnxruntime.get_available_providers()
                              if p != "AzureExecutionProvider")
        status["onnxruntime"] = f"usable ({providers}; exports on first use)"
    else:
        status["onnxruntime"] = "not installed (pip install 'spire-rt[onnx]')"
    status["torch-fast"] = ("usable (cuda; fused Triton kernels, CUDA graphs)" if torch.cuda.is_available()
                            else "needs a CUDA GPU")
    status["tensorrt"] = ("installed, not wired into the pipeline yet" if importlib.util.find_spec("tensorrt")
                          else "not installed (pip install 'spire-rt[tensorrt]')")
    status[default] += "  [default]"
    return status


__all__ = ["BACKEND_NAMES", "Backend", "backend_status", "create_backend", "default_backend", "resolve_device",
           "resolve_dtype"]
