"""`spire-rt bench`: PyTorch vs ONNX Runtime (and later TensorRT), per network and end to end."""
