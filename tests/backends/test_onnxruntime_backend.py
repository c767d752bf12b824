"""The ONNX Runtime backend against the PyTorch one: the pipeline, the guided step, bad input, caches."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from spire_rt.backends import create_backend, default_backend
from spire_rt.backends.onnxruntime_backend import INT8_RECIPE, OnnxRuntimeBackend, resolve_providers
from spire_rt.backends.torch_backend import TorchBackend
from spire_rt.errors import OptionError
from spire_rt.export import ExportError, ShapeError
from spire_rt.export.artifacts import Artifacts
from spire_rt.export.descriptors import ShapeProfile, descriptor
from spire_rt.pipeline import Restorer


def psnr(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def backends(tiny_onnx):
    model, artifacts = tiny_onnx
    ort = OnnxRuntimeBackend(model, artifacts=artifacts, export=False)  # everything is exported already
    yield model, TorchBackend(model), ort
    ort.close()


@pytest.mark.parametrize("prompt", ["", "a red fire hydrant"])
def test_pipeline_matches_pytorch(backends, photo_like, prompt):
    """Same seed, same image: the restored images agree to >= 40 dB (unguided, and guided with a prompt)."""
    model, torch_backend, ort_backend = backends
    options = {"restore": "Deblur with sigma 1.5", "prompt": prompt, "steps": 2, "seed": 7}
    reference = Restorer(model, torch_backend)(photo_like, **options)
    restored = Restorer(model, ort_backend)(photo_like, **options)
    assert reference.size == restored.size == (80, 64)
    assert psnr(reference, restored) >= 40


def test_guided_step_matches_pytorch(backends):
    model, torch_backend, ort_backend = backends
    feeds = descriptor("denoiser_guided", model, ort_backend.profile).sample_inputs("opt", seed=5)
    expected = torch_backend.run("denoiser_guided", feeds)["model_output"]
    got = ort_backend.run("denoiser_guided", feeds)["model_output"]
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()
    # The adaptor's modulation is in the graph: switching it off changes the result.
    off = ort_backend.run("denoiser_guided", {**feeds, "adaptor_strength": torch.zeros(1)})["model_output"]
    assert (off - got).abs().max() > 1e-3


def test_io_binding_and_plain_run_agree(backends, tiny_onnx):
    model, _, ort_backend = backends
    plain = OnnxRuntimeBackend(model, artifacts=tiny_onnx[1], export=False, io_binding=False)
    feeds = descriptor("adaptor", model, ort_backend.profile).sample_inputs("min", seed=3)
    bound = ort_backend.run("adaptor", feeds)
    unbound = plain.run("adaptor", feeds)
    assert list(bound) == list(unbound) and len(bound) == model.controlnet.num_modulations
    for name in bound:
        assert torch.equal(bound[name], unbound[name])


def test_optimised_graph_is_cached_and_reloaded(backends, tiny_onnx):
    model, _, ort_backend = backends
    feeds = descriptor("vae_decoder", model, ort_backend.profile).sample_inputs("opt", seed=1)
    first = ort_backend.run("vae_decoder", feeds)["image"]
    artifacts = tiny_onnx[1]
    cached = [name for name in artifacts.read_manifest()["artifacts"] if name.startswith("vae_decoder.ort-")]
    assert len(cached) == 1
    again = OnnxRuntimeBackend(model, artifacts=artifacts, export=False)
    assert torch.allclose(again.run("vae_decoder", feeds)["image"], first, atol=1e-5)


def test_shape_outside_the_exported_range(backends):
    _, _, ort_backend = backends
    with pytest.raises(ShapeError, match="outside the exported range") as error:
        ort_backend.run("vae_encoder", {"image": torch.zeros(1, 3, 192, 192)})  # exported for 16..96 px
    assert "\n" not in str(error.value)


def test_unknown_or_unavailable_execution_providers():
    with pytest.raises(OptionError, match="unknown execution provider 'warp-drive'"):
        resolve_providers(["warp-drive"], torch.device("cpu"))
    with pytest.raises(OptionError, match="not available|needs --device cuda"):
        resolve_providers(["cuda"], torch.device("cpu"))
    assert resolve_providers(None, torch.device("cpu")) == ["CPUExecutionProvider"]
    assert resolve_providers("CPUExecutionProvider", torch.device("cpu")) == ["CPUExecutionProvider"]


def test_missing_artifact_is_an_error_without_export_and_rebuilt_with_it(tiny_onnx, tmp_path):
    model, artifacts = tiny_onnx
    fresh = OnnxRuntimeBackend(model, cache=tmp_path, profile=artifacts.key.profile, export=False)
    with pytest.raises(ExportError, match="not exported yet"):
        fresh.run("text_encoder", {"input_ids": torch.zeros(1, model.max_text_length, dtype=torch.long)})
    exporting = OnnxRuntimeBackend(model, cache=tmp_path, profile=artifacts.key.profile)
    out = exporting.run("text_encoder", {"input_ids": torch.zeros(1, model.max_text_length, dtype=torch.long)})
    assert out["text_embeddings"].shape == (1, model.max_text_length, model.text_encoder.config.hidden_size)
    assert exporting.artifacts.root.parent == tmp_path / "onnx"


def test_int8_quantisation_is_opt_in_and_close(backends, tiny_onnx):
    model, torch_backend, _ = backends
    int8 = OnnxRuntimeBackend(model, artifacts=tiny_onnx[1], quantize="int8")
    ids = {"input_ids": torch.randint(0, 500, (2, model.max_text_length))}
    expected = torch_backend.run("text_encoder", ids)["text_embeddings"]
    got = int8.run("text_encoder", ids)["text_embeddings"]
    assert 0 < (got - expected).abs().max() < 0.1 * expected.abs().max()
    assert tiny_onnx[1].problem("text_encoder.int8") is None
    with pytest.raises(OptionError, match="unknown quantisation"):
        OnnxRuntimeBackend(model, artifacts=tiny_onnx[1], quantize="int4")


def test_int8_graph_of_another_recipe_is_quantised_again(backends, tmp_path, tiny_onnx):
    """An int8 graph cached without this recipe (full-range weights, before d842f18) is not trusted."""
    model, _, _ = backends
    artifacts = Artifacts(tmp_path / "cache", tiny_onnx[1].key)
    shutil.copytree(tiny_onnx[1].root, artifacts.root)
    OnnxRuntimeBackend(model, artifacts=artifacts, quantize="int8").graph_artifact("text_encoder")
    manifest = json.loads(artifacts.manifest_path.read_text())
    manifest["artifacts"]["text_encoder.int8"].pop("recipe")
    artifacts.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="quantised by another recipe"):
        OnnxRuntimeBackend(model, artifacts=artifacts, quantize="int8", export=False).graph_artifact("text_encoder")
    OnnxRuntimeBackend(model, artifacts=artifacts, quantize="int8").graph_artifact("text_encoder")
    assert artifacts.entry("text_encoder.int8")["recipe"] == INT8_RECIPE


def test_default_backend_and_factory(monkeypatch, tiny_onnx):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_backend() == "onnxruntime"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_backend() == "torch"
    model, artifacts = tiny_onnx
    backend = create_backend("onnxruntime", model, artifacts=artifacts, export=False)
    assert backend.name == "onnxruntime" and backend.precision == "fp32"
    with pytest.raises(OptionError, match="unknown backend"):
        create_backend("tensorflow", model)
    with pytest.raises(OptionError, match="fp32 or fp16"):
        OnnxRuntimeBackend(model, dtype="bf16", artifacts=artifacts)
    assert ShapeProfile.default(model).max_size[0] >= 1024
