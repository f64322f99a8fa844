"""The version of cnnlab: written into every model file, ONNX export and report."""

__version__ = "0.1.0"
