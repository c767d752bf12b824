"""FastTorchBackend: the Backend interface, dtype choice and its fp16 fallback, and end-to-end agreement.

CPU tests use the PyTorch references for the fused ops; the tests marked gpu run the Triton kernels and the CUDA
graphs, and are skipped where there is no CUDA device.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import randomize_heads

from spire_rt.backends import Backend
from spire_rt.backends.torch_backend import TorchBackend
from spire_rt.errors import OptionError
from spire_rt.fast import FastTorchBackend, choose_dtype, fp16_overflow_risk, resolve_ops
from spire_rt.models import build_preset, get_preset
from spire_rt.pipeline import Restorer

from .test_patch import denoiser_inputs

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
NAMES = ("sample", "timestep", "y_latent", "restore_embeddings", "semantic_embeddings", "adaptor_strength",
         "guidance_scale")


def feeds(model, size=16, seed=0, device="cpu"):
    return {name: t.to(device) for name, t in zip(NAMES, denoiser_inputs(model, size, seed))}


def relative_error(out, ref):
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def test_is_a_backend(tiny_model_copy):
    backend = FastTorchBackend(tiny_model_copy, device="cpu")
    assert isinstance(backend, Backend) and backend.name == "torch-fast"
    info = backend.describe()
    assert info["dtype"] == "float32" and info["kernels"] == "reference" and not info["cuda_graph"]
    with pytest.raises(KeyError, match="missing"):
        backend.run("denoiser", {"sample": torch.zeros(1)})
    backend.close()


@pytest.mark.parametrize("overlap", [False, True], ids=["one-stream", "overlap"])
def test_cpu_fp32_matches_torch_backend(overlap):
    fast_model, plain_model = build_preset("tiny"), build_preset("tiny")
    for model in (fast_model, plain_model):
        randomize_heads(model.controlnet, scale=0.2)
    fast = FastTorchBackend(fast_model, device="cpu", overlap=overlap)  # channels-last, references, fused QKV
    assert fast.describe()["overlap"] is overlap
    plain = TorchBackend(plain_model, device="cpu")
    for network in ("denoiser_guided", "denoiser"):
        inputs = feeds(plain_model, seed=3)
        if network == "denoiser":
            inputs["semantic_embeddings"] = inputs["semantic_embeddings"][1:]
        expected = plain.run(network, inputs)["model_output"]
        out = fast.run(network, inputs)["model_output"]
        assert out.dtype == torch.float32
        assert relative_error(out, expected) < 1e-5, network


def test_bf16_no_worse_than_eager_bf16():
    """Against fp32: the patched channels-last bf16 model errs no more than eager PyTorch in bf16 does."""
    fast_model, eager_model, plain_model = build_preset("tiny"), build_preset("tiny"), build_preset("tiny")
    fast = FastTorchBackend(fast_model, device="cpu", dtype="bf16")
    eager = TorchBackend(eager_model, device="cpu", dtype="bf16")
    plain = TorchBackend(plain_model, device="cpu")
    inputs = feeds(plain_model, seed=4)
    expected = plain.run("denoiser_guided", inputs)["model_output"]
    eager_error = relative_error(eager.run("denoiser_guided", inputs)["model_output"], expected)
    assert relative_error(fast.run("denoiser_guided", inputs)["model_output"], expected) <= 2 * eager_error + 1e-3


def test_restorer_end_to_end_matches_torch_backend(photo_like):
    fast_model, plain_model = build_preset("tiny"), build_preset("tiny")
    options = {"restore": "Deblur with sigma 1.5", "prompt": "a red square", "steps": 2, "seed": 7}
    fast = Restorer(fast_model, FastTorchBackend(fast_model, device="cpu"))(photo_like, **options)
    plain = Restorer(plain_model, TorchBackend(plain_model, device="cpu"))(photo_like, **options)
    # 8-bit images: channels-last convolutions round differently, which may move a value across a level
    assert np.abs(np.asarray(fast, dtype=np.float32) - np.asarray(plain, dtype=np.float32)).max() <= 1


def test_non_finite_probe_switches_to_bf16(tiny_model_copy):
    """The first denoiser step is checked; a non-finite one (fp16 overflow) moves the model to bf16 and reruns."""
    backend = FastTorchBackend(tiny_model_copy, device="cpu")
    real = backend.networks["denoiser_guided"]
    calls = []

    def overflowing_once(*args):
        calls.append(args[0].dtype)
        out = real(*args)
        return out * float("inf") if len(calls) == 1 else out

    backend.networks["denoiser_guided"] = overflowing_once
    backend.probed = False
    out = backend.run("denoiser_guided", feeds(tiny_model_copy))["model_output"]
    assert calls == [torch.float32, torch.bfloat16] and backend.dtype == torch.bfloat16
    assert bool(torch.isfinite(out).all())
    assert tiny_model_copy.unet.conv_in.weight.dtype == torch.bfloat16


def test_dtype_choice():
    sd21, sd15 = get_preset("sd21-base").unet, get_preset("sd15").unet
    assert fp16_overflow_risk(sd21) and not fp16_overflow_risk(sd15)
    assert fp16_overflow_risk({**sd15, "upcast_attention": True})
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert choose_dtype(sd21, cuda) == torch.bfloat16
    assert choose_dtype(sd15, cuda) == torch.float16
    assert choose_dtype(sd21, cpu) == torch.float32
    assert choose_dtype(sd21, cuda, "fp16") == torch.float16  # asked for: kept (the probe still guards it)
    with pytest.raises(OptionError):
        choose_dtype(sd15, cpu, "fp16")


def test_kernel_choice():
    cpu = torch.device("cpu")
    assert resolve_ops("off", cpu) is None
    assert resolve_ops("auto", cpu).name == "reference"  # the interpreter is for tests, never chosen by itself
    with pytest.raises(OptionError):
        resolve_ops("fastest", cpu)


def test_compile_option_uses_the_stock_forward(tiny_model_copy):
    backend = FastTorchBackend(tiny_model_copy, device="cpu", compile="default")
    info = backend.describe()
    assert info["kernels"] == "off" and info["compile"] == "default" and not info["patched"]


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("overlap", [False, True], ids=["one-stream", "overlap"])
def test_gpu_graph_replays_track_their_inputs(overlap):
    """Triton kernels + CUDA graph: each replay follows its new inputs, as close to fp32 as eager bf16 is."""
    models = [build_preset("tiny") for _ in range(3)]
    for model in models:
        randomize_heads(model.controlnet, scale=0.2)
    fast = FastTorchBackend(models[0], device="cuda", dtype="bf16", overlap=overlap)
    assert fast.describe()["kernels"] == "triton" and fast.cuda_graph
    eager = TorchBackend(models[1], device="cuda", dtype="bf16")
    plain = TorchBackend(models[2], device="cuda", dtype="fp32")
    for seed in (0, 1, 2):  # captured on the first, replayed on the others
        inputs = feeds(models[2], size=32, seed=seed, device="cuda")
        expected = plain.run("denoiser_guided", inputs)["model_output"]
        eager_error = relative_error(eager.run("denoiser_guided", inputs)["model_output"], expected)
        fast_error = relative_error(fast.run("denoiser_guided", inputs)["model_output"], expected)
        assert fast_error <= 2 * eager_error + 1e-3, (seed, fast_error, eager_error)
    assert fast.graphs["denoiser_guided"].captures == 1


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_gpu_restorer_close_to_fp32(photo_like, dtype, no_tf32):
    fast_model, plain_model = build_preset("tiny"), build_preset("tiny")
    options = {"restore": "Deblur with sigma 1.5", "prompt": "a red square", "steps": 4, "seed": 7}
    fast = Restorer(fast_model, FastTorchBackend(fast_model, device="cuda", dtype=dtype))(photo_like, **options)
    plain = Restorer(plain_model, TorchBackend(plain_model, device="cuda", dtype="fp32"))(photo_like, **options)
    fast, plain = (np.asarray(image, dtype=np.float64) / 255.0 for image in (fast, plain))  # 8-bit images
    mse = float(np.mean((fast - plain) ** 2))
    assert 10 * np.log10(1 / max(mse, 1e-12)) > 30
