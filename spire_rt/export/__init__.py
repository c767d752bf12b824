"""ONNX export of SPIRE's networks: descriptors, exporter, artifacts and the ONNX Runtime vs PyTorch check.

    descriptors.py  one class per network: tensor names, dtypes, dynamic axes, min/opt/max shapes, sample inputs
    exporter.py     torch -> ONNX (TorchScript exporter, opset 17+), checker, shape inference, external data
    artifacts.py    the one object owning artifact paths, keyed by model hash, precision, shapes, library versions
    check.py        ONNX Runtime vs PyTorch on fresh random inputs, per network and output
    cli.py          `spire-rt export`
"""

from ..errors import SpireError


class ExportError(SpireError):
    """An ONNX artifact that cannot be built, verified or loaded (missing, corrupt, stale, failed check)."""


class ShapeError(SpireError, ValueError):
    """A tensor fed to an exported graph with a shape outside the range the graph was exported for."""


__all__ = ["ExportError", "ShapeError"]
