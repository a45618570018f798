"""The subject's mask: clicks through SAM (PyTorch or ONNX), the automatic subject, GrabCut, refine."""
