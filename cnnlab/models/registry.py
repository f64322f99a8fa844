"""Model kinds: one config dataclass per kind, one registry, and one ``load_model`` for every model file.

A model file is safetensors weights whose metadata holds the kind and its config (as nanoGPT keeps the
config in the checkpoint), so ``load_model`` rebuilds any registered kind without being told what it is.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any, ClassVar

import torch

from cnnlab.core.errors import ConfigError, DataError
from cnnlab.train.inputs import Preprocessing
from cnnlab.train.model import MODEL_FORMAT, Model

_CONFIG_KINDS: dict[str, type[ModelConfig]] = {}


@dataclass(frozen=True)
class ModelConfig:
    """What every model config holds: the input shape, the classes and the seed of its initial weights.

    ``num_classes`` follows ``class_names`` when only the names are given; classes without names are
    called "0", "1", ... Subclasses set ``kind`` (the registry's name) and add their own settings.
    """

    kind: ClassVar[str]
    input_shape: tuple[int, int, int] = (32, 32, 3)
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    seed: int | None = 0

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            _CONFIG_KINDS[cls.kind] = cls

    def __post_init__(self):
        object.__setattr__(self, "input_shape", hwc_shape(self.input_shape))
        if self.class_names is not None:
            names = tuple(str(name) for name in self.class_names)
            if self.num_classes is not None and self.num_classes != len(names):
                raise ConfigError(f"num_classes={self.num_classes} but {len(names)} class_names were given")
            object.__setattr__(self, "class_names", names)
            object.__setattr__(self, "num_classes", len(names))
        elif self.num_classes is None:
            object.__setattr__(self, "num_classes", 10)
        if int(self.num_classes) < 2:
            raise ConfigError(f"need at least 2 classes, got num_classes={self.num_classes}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (tuples as lists); ``from_dict`` reads them back."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.kind} settings {unknown}; valid: {sorted(known)}")
        tuples = {k: tuple(v) for k, v in values.items() if isinstance(v, list)}
        return cls(**{**values, **tuples})

    def changes(self) -> dict[str, Any]:
        """The settings that differ from the defaults, for short descriptions."""
        defaults = type(self)()
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(defaults, f.name)
        }

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)


_BUILDERS: dict[str, Callable[..., Model]] = {}


# The modules that define model kinds; imported on first use, as they import this one. A new kind's module
# goes here (and into tests/test_models.py's MODEL_KINDS, which checks that every kind is tested).
_KIND_MODULES = (
    "cnnlab.models.cnn",
    "cnnlab.models.recipe_net",
    "cnnlab.models.resnet50_classifier",
    "cnnlab.models.transfer_head",
)


def register_model(kind: str) -> Callable:
    """Decorator: ``@register_model("cnn")`` on ``def builder(config, device) -> Model``."""

    def register(builder: Callable[..., Model]) -> Callable[..., Model]:
        _BUILDERS[kind] = builder
        return builder

    return register


def _load_kinds() -> None:
    for module in _KIND_MODULES:
        import_module(module)


def list_models() -> list[str]:
    """The registered model kinds, e.g. ['cnn', 'recipe', 'transfer_head']."""
    _load_kinds()
    return sorted(_BUILDERS)


def create_model(config: ModelConfig, device: str | torch.device | None = "auto") -> Model:
    """A new model of ``config.kind`` with its initial weights (seeded by ``config.seed``)."""
    if config.kind not in _BUILDERS:
        _load_kinds()
    if config.kind not in _BUILDERS:
        raise ConfigError(f"unknown model kind {config.kind!r}; registered: {sorted(_BUILDERS)}")
    return _BUILDERS[config.kind](config, device)


REQUIRED_METADATA = ("format_version", "kind", "config", "class_names", "input_shape", "preprocessing")


def _model_file(path_or_run_folder: str | os.PathLike) -> Path:
    path = Path(path_or_run_folder)
    if path.is_dir():
        path = path / "weights.safetensors"
    if not path.is_file():
        raise DataError(f"{path} does not exist; give a model file (.safetensors) or a run folder holding one")
    return path


def _read_metadata(path: Path) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise DataError(
            f"{path} is not a readable safetensors file ({str(error).splitlines()[0]}): it is truncated, corrupt "
            "or not a model; save the model again or retrain"
        ) from None
    if metadata.get("format") != MODEL_FORMAT and "config" not in metadata:
        raise DataError(f"{path} is not a cnnlab model: its metadata has no cnnlab model description")
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ConfigError(
            f"{path} was saved by an older cnnlab: its metadata lacks {', '.join(missing)}; retrain it, or load "
            "it with that cnnlab version and save it again"
        )
    return metadata


def load_model(path_or_run_folder: str | os.PathLike, device: str | torch.device | None = "auto") -> Model:
    """Rebuild any model cnnlab saves (a .safetensors file from ``Model.save``, or a run folder) with its
    weights, class names and preprocessing."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = _model_file(path_or_run_folder)
    metadata = _read_metadata(path)
    kind = metadata["kind"]
    if kind not in _CONFIG_KINDS:
        _load_kinds()
    if kind not in _CONFIG_KINDS:
        raise ConfigError(f"{path} holds a model of kind {kind!r}, which this cnnlab does not know; update cnnlab")
    saved = json.loads(metadata["config"])
    # Built unseeded: the weights come from the file, so loading leaves the global random state alone.
    config = _CONFIG_KINDS[kind].from_dict({**saved, "seed": None})
    model = create_model(config, device)
    try:
        weights = load_file(str(path), device=str(model.device))
        model.network.load_state_dict(weights)
    except (SafetensorError, OSError, RuntimeError) as error:
        raise DataError(
            f"{path}: its weights cannot be read ({str(error).splitlines()[0]}); retrain or re-save"
        ) from None
    model.config = config.replace(seed=saved.get("seed"))
    model.preprocessing = Preprocessing.from_dict(json.loads(metadata["preprocessing"]))
    return model


def hwc_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ConfigError(f"input_shape must be (height, width, channels), got {tuple(input_shape)}")
    height, width, channels = (int(v) for v in input_shape)
    return height, width, channels
