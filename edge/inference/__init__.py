"""Running one model version: decode, the task plugins, ONNX Runtime sessions and their providers,
batching."""
