"""The PyTorch backend: runs the model's networks eagerly, on the CPU or a CUDA device."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import OptionError
from ..models.networks import NETWORK_OUTPUTS
from ..models.spire_model import SpireModel
from .base import ordered_feeds, resolve_device, resolve_dtype


class TorchBackend:
    name = "torch"

    def __init__(self, model: SpireModel, device: str | torch.device = "cpu", dtype=None,
                 threads: int | None = None):
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise OptionError(f"threads must be a positive integer, got {threads!r}")
            torch.set_num_threads(threads)  # process-wide: torch has no per-module thread pool
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        for module in model.modules().values():
            module.to(device=self.device, dtype=self.dtype).eval()
        self.networks = model.networks()

    def run(self, network: str, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        args = [self.cast(tensor) for tensor in ordered_feeds(network, feeds, self.networks)]
        with torch.inference_mode():
            output = self.networks[network](*args)
        return {NETWORK_OUTPUTS[network][0]: output.float()}

    def cast(self, tensor: torch.Tensor) -> torch.Tensor:
        dtype = self.dtype if tensor.is_floating_point() else tensor.dtype
        return tensor.to(device=self.device, dtype=dtype)

    def close(self) -> None:
        self.networks = {}
