"""The fast path's patching logic on the CPU (references, or the kernels under Triton's interpreter).

TRITON_INTERPRET must be set before spire_rt.kernels is first imported; pytest loads this file before the test
modules below it.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture()
def no_tf32():
    """fp32 references on a GPU in true fp32: by default cuDNN convolutions run in TF32 (about 1e-3 relative)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
