"""The fast path's patching logic on the CPU (references, or the kernels under Triton's interpreter).

TRITON_INTERPRET must be set before spire_rt.kernels is first imported; pytest loads this file before the test
modules below it.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
