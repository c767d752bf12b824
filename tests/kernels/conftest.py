"""Kernel tests run on the GPU when there is one, else on the CPU through Triton's interpreter.

TRITON_INTERPRET must be set before any @triton.jit function is defined, i.e. before spire_rt.kernels is first
imported; pytest loads this file before the test modules below it.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from spire_rt.kernels import HAVE_TRITON, triton_available

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _kernels_runnable():
    if not HAVE_TRITON:
        pytest.skip("triton is not installed (pip install 'triton>=3.2'); the references are tested in tests/fast")
    if not triton_available(DEVICE):
        pytest.skip("spire_rt.kernels was imported before TRITON_INTERPRET=1 was set: run the kernel tests in a "
                    "fresh process, or set TRITON_INTERPRET=1 yourself")


@pytest.fixture()
def device() -> str:
    return DEVICE
