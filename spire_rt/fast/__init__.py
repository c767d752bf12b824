"""The fast GPU path: a loaded SPIRE model patched with the fused kernels and captured in CUDA graphs.

    from spire_rt.fast import FastTorchBackend
    backend = FastTorchBackend(model, device="cuda")          # backend name "torch-fast"

- backend.py    FastTorchBackend: dtype, channels-last, patches, CUDA graph per denoiser shape, compile option
- patch.py      which diffusers modules are patched and how (instance attributes only, undoable)
- ops.py        the fused ops the patches call: Triton kernels (spire_rt.kernels) or their PyTorch references
- overlap.py    the adaptor on a second CUDA stream, beside the UNet's encoder
- graph.py      capture-once, replay-per-step CUDA graphs with static input buffers
- precision.py  fp16 vs bf16 (SD 2.x fp16 attention overflow)

Attention is PyTorch's scaled_dot_product_attention, not a Triton kernel: on an H100 it dispatches to flash /
cuDNN attention (wgmma, TMA), which the Triton tutorial kernel matches at best for SPIRE's shapes (head dim 64,
4096 query tokens at 512x512, 77 keys in cross-attention). What surrounds it is handled without a kernel: in
channels-last the head split and merge are views, and QKV (or KV) projections are one GEMM. The H200 profile
(bench/results/gpu_check_h200.md) bears this out: attention is cuDNN's sm90 flash kernel, 1.05 of the step's 9.1 ms
of kernel time, with no layout copy beside it worth fusing.
"""

from .backend import FastTorchBackend
from .ops import FastOps, resolve_ops
from .patch import Patches, PendingSkip, patch_model
from .precision import choose_dtype, fp16_overflow_risk

__all__ = ["FastOps", "FastTorchBackend", "Patches", "PendingSkip", "choose_dtype", "fp16_overflow_risk",
           "patch_model", "resolve_ops"]
