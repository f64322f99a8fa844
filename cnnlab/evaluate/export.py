"""Export a trained model to ONNX, so it runs without Python's cnnlab or PyTorch (ONNX Runtime, browsers, C++).

The exported graph takes what a user has, raw pixels: uint8 images (N, height, width, channels), RGB,
any batch size. The lab's scaling (x / 127.5 - 1), the NHWC -> NCHW permute and the softmax are inside
the graph, and the file's metadata states the layout, the scaling, the class names and the input size.
Every export is checked against PyTorch with ONNX Runtime before the file is renamed into place.

"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnlab.core.errors import CnnlabError, ConfigError
from cnnlab.core.files import atomic_write
from cnnlab.data.arrays import scale_images
from cnnlab.train.inputs import nchw
from cnnlab.train.model import Model

FORMATS = ("onnx",)
OPSET = 18


INPUT_NAME, OUTPUT_NAME = "images", "probabilities"


PARITY_IMAGES = 64
PARITY_TOLERANCE = 1e-4
INSTALL_HINT = "install the ONNX extra: pip install 'cnnlab[onnx]'"


class RawImageClassifier(nn.Module):
    """uint8 NHWC pixels -> class probabilities: the model's preprocessing and softmax around its network."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        scaled = scale_images(images)  # the lab's symmetric scaling (export_onnx checks the model's)
        return torch.softmax(self.network(nchw(scaled)), dim=1)


@dataclass(frozen=True)
class ExportResult:
    """The file written, and how closely ONNX Runtime matched PyTorch on the check images."""

    path: Path
    max_abs_difference: float
    same_top_class: int
    images: int
    seconds: float

    @property
    def passed(self) -> bool:
        return self.max_abs_difference < PARITY_TOLERANCE and self.same_top_class == self.images

    def summary(self) -> str:
        return (
            f"ONNX Runtime vs PyTorch on {self.images} images: max |probability difference| = "
            f"{self.max_abs_difference:.2e} (limit {PARITY_TOLERANCE:.0e}), same top class for "
            f"{self.same_top_class}/{self.images}"
        )


def metadata(model: Model) -> dict[str, str]:
    """What a user of the bare file needs to feed it and read its output."""
    from cnnlab.core.version import __version__

    height, width, channels = model.input_shape
    return {
        "cnnlab.version": __version__,
        "cnnlab.input_layout": f"NHWC uint8 (batch, {height}, {width}, {channels}), "
        + ("RGB" if channels == 3 else "grayscale")
        + ", values 0-255",
        "cnnlab.input_scaling": "x / 127.5 - 1, inside the graph: feed raw pixels",
        "cnnlab.input_size": json.dumps([height, width, channels]),
        "cnnlab.resize": model.preprocessing.resize,
        "cnnlab.class_names": json.dumps(list(model.class_names)),
        "cnnlab.output": "probabilities (batch, classes), softmax applied",
    }


def _onnx_proto(model: Model):
    """The graph as an onnx.ModelProto with a dynamic batch axis.

    torch.export-based exporter (dynamo=True), not the TorchScript one: both run offline and match
    PyTorch here, but the TorchScript exporter is deprecated since torch 2.9 and warns that it will be
    removed, so files exported today keep being reproducible after a torch upgrade. It needs onnxscript.
    """
    network = model.network if model.device.type == "cpu" else copy.deepcopy(model.network).cpu()  # .to() is in place
    classifier = RawImageClassifier(network).eval()
    example = torch.zeros((2, *model.input_shape), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1)
    # The exporter logs a warning per torchvision operator it cannot register (cnnlab never uses them)
    # and torch.export emits internal deprecation warnings: neither is the user's business.
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            program = torch.onnx.export(
                classifier,
                (example,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"images": {0: batch}},
                opset_version=OPSET,
                dynamo=True,
                verbose=False,
            )
    finally:
        exporter_log.setLevel(level)
    return program.model_proto


def check_parity(model: Model, onnx_path: str | os.PathLike, images: np.ndarray) -> tuple[float, int]:
    """(max absolute probability difference, images with the same top class): ONNX Runtime against PyTorch."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the thread budget cnnlab was given
    session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    onnx_probabilities = session.run(None, {INPUT_NAME: images})[0]
    with model.in_float32():  # the exported graph computes in float32
        torch_probabilities = model.predict(images)
    difference = float(np.abs(onnx_probabilities - torch_probabilities).max())
    same_top = int((onnx_probabilities.argmax(1) == torch_probabilities.argmax(1)).sum())
    return difference, same_top


def check_images(model: Model, count: int = PARITY_IMAGES, seed: int = 0) -> np.ndarray:
    """Random uint8 images of the model's input shape: every pixel value, no data set needed."""
    return np.random.default_rng(seed).integers(0, 256, (count, *model.input_shape), dtype=np.uint8)


def export_onnx(model: Model, path: str | os.PathLike, images: np.ndarray | None = None) -> ExportResult:
    """Write ``path`` as ONNX and check it against PyTorch on ``images`` (default: 64 random ones).

    The check runs on the temp file; a file that fails it is never renamed into place (CnnlabError).
    """
    try:
        import onnx
        import onnxruntime  # noqa: F401  (fail before exporting, not after)
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ConfigError(f"ONNX export needs {error.name}; {INSTALL_HINT}") from error
    scale = model.preprocessing.scale
    if scale != "symmetric":
        raise ConfigError(f"ONNX export supports models scaled as x / 127.5 - 1; this one is scaled {scale!r}")
    images = check_images(model) if images is None else np.asarray(images, dtype=np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    proto = _onnx_proto(model)
    onnx.helper.set_model_props(proto, metadata(model))
    outcome: dict[str, ExportResult] = {}

    def write_and_check(tmp: str) -> None:
        onnx.save_model(proto, tmp)
        difference, same_top = check_parity(model, tmp, images)
        result = ExportResult(path, difference, same_top, len(images), time.perf_counter() - started)
        if not result.passed:
            raise CnnlabError(f"{path} not written: {result.summary()}; please report this model")
        outcome["result"] = result

    atomic_write(path, write_and_check)
    return outcome["result"]


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The cnnlab metadata of an exported file (what a server reads to label the probabilities)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in proto.metadata_props}
