"""Shared fixtures: tiny random models built in-process (nothing is loaded from a hub)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from spire_rt.models import build_preset
from spire_rt.models.adaptor import init_adaptor_from_unet


@pytest.fixture(scope="session", autouse=True)
def private_artifact_cache(tmp_path_factory):
    """ONNX exports made on first use go to a folder of this test session, never the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("spire-rt-cache")
    previous = os.environ.get("SPIRE_RT_CACHE")
    os.environ["SPIRE_RT_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("SPIRE_RT_CACHE", None)
    else:
        os.environ["SPIRE_RT_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_model():
    """The tiny preset's architecture with seeded random weights. Tests must not modify it."""
    return build_preset("tiny")


@pytest.fixture()
def tiny_model_copy():
    """A private tiny model for tests that change weights."""
    return build_preset("tiny")


@pytest.fixture(scope="session")
def per_level_model():
    """tiny with two layers in the UNet's full-resolution level and one below (`layers_per_block` given per
    level, as diffusers allows): skips and modulations no longer repeat one count per level. Tests must not
    modify it."""
    model = build_preset("tiny")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model.unet = UNet2DConditionModel(**{**model.unet.config, "layers_per_block": [2, 1, 1]})
    model.controlnet = init_adaptor_from_unet(model.unet)
    return model


def randomize_heads(adaptor, scale: float = 0.1, seed: int = 0) -> None:
    """Give the zero-initialised fusion heads random weights, so modulation does something measurable."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in [*adaptor.skip_heads, adaptor.mid_head]:
            head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * scale)
            head.bias.copy_(torch.randn(head.bias.shape, generator=generator) * scale)


def randomize_fidelity(branch, scale: float = 0.05, seed: int = 0):
    """Give a fidelity branch's zero-initialised heads random weights, so the degraded image steers decoding."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in branch.heads:
            head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * scale)
            head.bias.copy_(torch.randn(head.bias.shape, generator=generator) * scale)
    return branch


@pytest.fixture()
def photo_like():
    """A smooth 64x80 RGB image with edges: something a restorer could plausibly see."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:64, 0:80] / 64.0
    image = np.stack([0.5 + 0.4 * np.sin(3 * x + c) * np.cos(2 * y) for c in range(3)], axis=2)
    image[20:40, 30:50] = [0.9, 0.2, 0.1]
    return np.clip(image + rng.normal(0, 0.02, image.shape), 0, 1).astype(np.float32)
