"""mfql server: batched ONNX Runtime serving of policy bundles (no torch import)."""
