"""The torch backend's options: a CPU thread count, and a clear error for anything else."""

from __future__ import annotations

import pytest
import torch

from spire_rt.backends import create_backend
from spire_rt.errors import OptionError
from spire_rt.models import build_preset


@pytest.fixture()
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_threads_sets_torch_threads(keep_threads):
    create_backend("torch", build_preset("tiny"), threads=1)
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("options, message", [
    ({"threads": 0}, "threads must be a positive integer"),
    ({"threads": "2"}, "threads must be a positive integer"),
    ({"cache": "/tmp"}, "takes only `threads`"),
])
def test_bad_options_are_refused(keep_threads, options, message):
    with pytest.raises(OptionError, match=message):
        create_backend("torch", build_preset("tiny"), **options)


def test_torch_fast_refuses_threads():
    with pytest.raises(OptionError, match="torch-fast backend runs on CUDA"):
        create_backend("torch-fast", build_preset("tiny"), threads=2)
