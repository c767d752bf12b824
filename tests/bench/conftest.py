"""Shares the tiny model's ONNX artifacts fixture (exported once per session, see tests/export/conftest.py)."""

from export.conftest import one_torch_thread, tiny_onnx  # noqa: F401  (fixtures: registered by being here)
