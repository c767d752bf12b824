"""The tiny model's ONNX artifacts, exported once per test session (each test folder's conftest reuses them)."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize_heads

from spire_rt.export.artifacts import ArtifactKey, Artifacts
from spire_rt.export.descriptors import ALL_NETWORKS, ShapeProfile
from spire_rt.export.exporter import ensure_exported
from spire_rt.models import build_preset


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread: the tiny shapes gain nothing from two, and on a loaded 2-core machine torch's
    OpenMP threads wait on each other (we measured 100x slower calls); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory):
    """(model, artifacts): tiny with random fusion heads (so the adaptor matters), every network in both
    flavours (plain, and fused attention for ONNX Runtime), 16..96 px.

    Tests must not modify either; the folder is shared by path, so the second folder's fixture reuses the export.
    """
    model = build_preset("tiny")
    randomize_heads(model.controlnet)
    key = ArtifactKey.for_model(model, "fp32", ShapeProfile.dynamic(16, 96, (32, 32)))
    artifacts = Artifacts(tmp_path_factory.getbasetemp() / "tiny-onnx", key)
    ensure_exported(model, artifacts, ALL_NETWORKS)
    ensure_exported(model, artifacts, ("denoiser", "denoiser_guided", "adaptor"), fused=True)  # what ORT runs
    return model, artifacts
