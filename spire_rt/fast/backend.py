"""The fast PyTorch backend ("torch-fast"): the TorchBackend's networks, patched and captured for CUDA.

    backend = FastTorchBackend(model, device="cuda")       # bf16 for SD 2.x, fp16 otherwise; kernels; CUDA graph
    restorer = Restorer(model, backend)

What it does to the model (in place, like TorchBackend; `close()` undoes the patches, not the casts):
1. cast to the compute dtype (precision.py) and to channels-last (UNet, adaptor, VAE): cuDNN's NHWC
   convolutions, and the transformers' head split becomes a view;
2. patch the modules (patch.py): the fused decoder entry, GroupNorm+SiLU, GEGLU, fused QKV projections, and
   the adaptor on a second CUDA stream beside the UNet's encoder (overlap.py; `overlap=False` keeps one stream);
3. capture each denoiser call in a CUDA graph per input shape (graph.py): one guided step is one replay, where
   eager PyTorch launches about two thousand kernels from Python. Inputs are copied into static buffers each
   step, so prompts, strength and guidance can change without a recapture.
The first fp16 denoiser call runs eagerly and checks its output: a step that is not finite switches the model to
bf16 (when the caller fixed fp16, it only warns). `compile="default"` (or another torch.compile mode) compiles the
unpatched denoisers instead, for comparison: Inductor writes its own fused kernels, and "reduce-overhead" its own
CUDA graphs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch

from ..backends.base import ordered_feeds, resolve_device
from ..models.networks import NETWORK_INPUTS, NETWORK_OUTPUTS
from .graph import GraphedCall
from .ops import resolve_ops
from .patch import Patches, patch_model
from .precision import choose_dtype, is_finite

log = logging.getLogger(__name__)

DENOISERS = ("denoiser", "denoiser_guided")
CHANNELS_LAST_MODULES = ("unet", "controlnet", "vae")


class FastTorchBackend:
    name = "torch-fast"

    def __init__(self, model, device: str | torch.device = "cuda", dtype=None, *, kernels: str = "auto",
                 cuda_graph: bool = True, channels_last: bool = True, fuse_qkv: bool = True,
                 overlap: bool = True, compile: str | None = None):
        self.device = resolve_device(device)
        self.model = model
        self.dtype_fixed = dtype is not None
        self.dtype = choose_dtype(model.unet.config, self.device, dtype)
        if compile is not None:
            kernels, cuda_graph = "off", False
        self.channels_last = channels_last
        self.cast_model(self.dtype)
        self.networks = model.networks()
        self.ops = resolve_ops(kernels, self.device)
        self.overlap = overlap and bool(self.ops)
        self.patches = patch_model(model, self.networks, self.ops, fuse_qkv, self.overlap) if self.ops else Patches()
        self.compile = compile
        if compile is not None:
            for name in DENOISERS:
                self.networks[name] = torch.compile(self.networks[name], mode=None if compile == "default" else compile)
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self.graphs: dict[str, GraphedCall] = {}
        self.probed = self.dtype != torch.float16
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN time its NHWC algorithms once

    def describe(self) -> dict:
        return {"backend": self.name, "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                "kernels": self.ops.name if self.ops else "off", "cuda_graph": self.cuda_graph,
                "channels_last": self.channels_last, "overlap": self.overlap, "compile": self.compile,
                "patched": dict(self.patches.counts)}

    def cast_model(self, dtype: torch.dtype) -> None:
        for name, module in self.model.modules().items():
            module.to(device=self.device, dtype=dtype).eval()
            if self.channels_last and name in CHANNELS_LAST_MODULES:
                module.to(memory_format=torch.channels_last)
        self.dtype = dtype

    def run(self, network: str, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        args = [self.cast(tensor) for tensor in ordered_feeds(network, feeds, self.networks)]
        with torch.inference_mode():
            if network in DENOISERS:
                output = self.run_denoiser(network, feeds, args)
            else:
                output = self.networks[network](*args)
            output = output.to(torch.float32, copy=True)  # a copy: a graph's output buffer is reused
        return {NETWORK_OUTPUTS[network][0]: output}

    def run_denoiser(self, network: str, feeds, args) -> torch.Tensor:
        if not self.probed:
            self.probed = True
            output = self.networks[network](*args)
            if is_finite(output):
                return output
            if self.dtype_fixed:
                log.warning("fp16 denoiser step is not finite (SD 2.x attention overflow?); fp16 was asked for, so "
                            "it stays: leave the dtype unset to fall back to bf16")
                return output
            log.warning("fp16 denoiser step is not finite (SD 2.x attention overflow?): switching to bf16")
            self.cast_model(torch.bfloat16)
            self.graphs.clear()
            args = [self.cast(feeds[name]) for name in NETWORK_INPUTS[network]]
        if not self.cuda_graph:
            return self.networks[network](*args)
        if network not in self.graphs:
            self.graphs[network] = GraphedCall(self.networks[network])
        return self.graphs[network](*args)

    def cast(self, tensor: torch.Tensor) -> torch.Tensor:
        dtype = self.dtype if tensor.is_floating_point() else tensor.dtype
        return tensor.to(device=self.device, dtype=dtype)

    def close(self) -> None:
        self.graphs.clear()
        self.patches.undo()
        self.networks = {}
