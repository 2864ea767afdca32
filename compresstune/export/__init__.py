"""ONNX export, ONNX Runtime sessions and verification."""
