"""Model identity, manifests, the folder registry and the ONNX runtime."""
