"""The search space: which settings a search may vary, read from TOML, checked before any trial runs."""

from __future__ import annotations

import difflib
import inspect
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from cnnlab.core.errors import ConfigError
from cnnlab.data.augment import Augmentation, parse_augment_spec
from cnnlab.data.cifar import IMAGE_SHAPE
from cnnlab.models.cnn import HEADS, build_cnn
from cnnlab.train.model import OPTIMIZERS


@dataclass(frozen=True)
class Parameter:
    """A setting the search may vary: its type and the values that can work."""

    kind: type
    valid: Callable[[Any], bool]
    rule: str


MAX_CONV_LAYERS = min(IMAGE_SHAPE[:2]).bit_length() - 1  # 2x2 pooling halves 32x32 five times, to 1x1


# Parents come before the settings that depend on them (ACTIVE_WHEN): suggestions follow this order.
PARAMETERS: dict[str, Parameter] = {
    "n_conv_layers": Parameter(
        int,
        lambda v: 1 <= v <= MAX_CONV_LAYERS,
        f"1 to {MAX_CONV_LAYERS}: each conv block halves the {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]} image with "
        f"2x2 pooling, so {MAX_CONV_LAYERS + 1} blocks would shrink it below 1x1",
    ),
    "n_filters": Parameter(int, lambda v: v >= 1, "at least 1"),
    "n_dense_layers": Parameter(int, lambda v: v >= 0, "0 or more"),
    "n_nodes": Parameter(int, lambda v: v >= 1, "at least 1"),
    "use_dropout": Parameter(bool, lambda v: True, "true or false"),
    "dropout_rate": Parameter(float, lambda v: 0 <= v < 1, "in [0, 1)"),
    "l2": Parameter(float, lambda v: v >= 0, "0 or more"),
    "learning_rate": Parameter(float, lambda v: v > 0, "above 0"),
    "optimizer": Parameter(str, lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
    "head": Parameter(str, lambda v: v in HEADS, f"one of {', '.join(HEADS)}"),
    "batch_size": Parameter(int, lambda v: v >= 1, "at least 1"),
    "augment_strength": Parameter(
        float, lambda v: 0 <= v <= 1, "in [0, 1]: 0 is none, 1 is rotation=20,shift=0.15,flip"
    ),
}


# A setting that matters only when another allows it; suggesting it otherwise would blur importances.
ACTIVE_WHEN: dict[str, tuple[str, Callable[[Any], bool], str]] = {
    "dropout_rate": ("use_dropout", bool, "use_dropout is true"),
    "n_nodes": ("n_dense_layers", lambda v: v > 0, "n_dense_layers is above 0"),
}


NOT_SEARCHABLE = {
    "epochs": "every trial trains for --epochs epochs (the pruner stops weak ones earlier)",
    "seed": "all trials share --seed, so they differ only in the searched settings",
    "augment": "search augment_strength (0 to 1); the best configuration gets the matching augment spec",
}


BUILD_DEFAULTS = {name: p.default for name, p in inspect.signature(build_cnn).parameters.items()}
_TOML_TYPES = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}
_KIND_NAMES = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}


@dataclass(frozen=True)
class SearchSpace:
    """Searched settings as Optuna distributions, and settings fixed for every trial."""

    distributions: dict[str, BaseDistribution]
    fixed: dict[str, Any]

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """One configuration; a setting with no effect (dropout_rate without dropout) is left out."""
        config: dict[str, Any] = {}
        for name in PARAMETERS:
            if name in ACTIVE_WHEN:
                parent, active, _ = ACTIVE_WHEN[name]
                if not active(config.get(parent, BUILD_DEFAULTS[parent])):
                    continue
            if name in self.fixed:
                config[name] = self.fixed[name]
            elif name in self.distributions:
                config[name] = _suggest(trial, name, self.distributions[name])
        return config


class DefineByRun:
    """The space as Ray's OptunaSearch wants it: a picklable function of an Optuna trial. The trial's
    number travels in the configuration so results can be filed under it in the study."""

    def __init__(self, space: SearchSpace):
        self.space = space

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        return {**self.space.suggest(trial), RAY_TRIAL_KEY: trial.number}


def _suggest(trial: optuna.Trial, name: str, distribution: BaseDistribution) -> Any:
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(
            name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
        )
    return trial.suggest_float(name, distribution.low, distribution.high, step=distribution.step, log=distribution.log)


# The lab's search space: what `cnnlab tune` searches without --space (examples/space.toml is this, commented).
DEFAULT_SPACE: dict[str, Any] = {
    "n_conv_layers": {"low": 1, "high": 4},
    "n_filters": {"low": 8, "high": 48, "log": True},
    "n_dense_layers": {"low": 0, "high": 2},
    "n_nodes": {"low": 32, "high": 256, "step": 32},
    "use_dropout": {"choices": [True, False]},
    "dropout_rate": {"low": 0.1, "high": 0.5},
    "batch_size": {"choices": [16, 32, 64, 128]},
    "learning_rate": {"low": 1e-4, "high": 3e-2, "log": True},
    "optimizer": {"choices": ["adam", "sgd", "rmsprop"]},
    "augment_strength": {"low": 0.0, "high": 1.0},
    "head": "flatten",
}


def load_space(path: str | os.PathLike | None = None) -> SearchSpace:
    """Read and check a search-space TOML file (format: examples/space.toml); None is DEFAULT_SPACE."""
    if path is None:
        return parse_space(DEFAULT_SPACE, "the lab's search space")
    path = Path(path)
    try:
        spec = tomllib.loads(path.read_text())
    except OSError as error:
        raise ConfigError(
            f"cannot read search space {path}: {error.strerror}; pass a TOML file like examples/space.toml"
        ) from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from error
    return parse_space(spec, str(path))


def parse_space(spec: dict[str, Any], origin: str = "search space") -> SearchSpace:
    """Check a search space given as a mapping. Each key is a setting; its value is fixed (``3``),
    a range (``{low = 1, high = 4}``, floats may add ``log = true``, either may add ``step``) or
    categorical (``{choices = [...]}``). Raises ConfigError naming the setting and the fix."""
    distributions: dict[str, BaseDistribution] = {}
    fixed: dict[str, Any] = {}
    for name, value in spec.items():
        if name not in PARAMETERS:
            raise ConfigError(_unknown_parameter(name, origin))
        where = f"{origin}: {name}"
        if isinstance(value, dict):
            distributions[name] = _distribution(where, PARAMETERS[name], value)
        else:
            fixed[name] = _checked(where, PARAMETERS[name], value, "value")
    for child, (parent, active, condition) in ACTIVE_WHEN.items():
        possible = _possible_values(parent, distributions, fixed)
        if child in spec and not any(active(v) for v in possible):
            raise ConfigError(
                f"{origin}: {child} would never be used: it matters only when {condition}, and {parent} "
                f"can only be {' or '.join(map(repr, possible))}; search {parent} too, or drop {child}"
            )
    if not distributions:
        raise ConfigError(
            f"{origin}: nothing to search; give at least one setting a range ({{ low = 1, high = 4 }}) "
            "or choices ({ choices = [...] })"
        )
    return SearchSpace(distributions, fixed)


def _unknown_parameter(name: str, origin: str) -> str:
    if name in NOT_SEARCHABLE:
        return f"{origin}: {name} is not searched here: {NOT_SEARCHABLE[name]}"
    close = difflib.get_close_matches(name, PARAMETERS, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{origin}: unknown parameter {name!r}; {hint}searchable settings: {', '.join(PARAMETERS)}"


def _checked(where: str, parameter: Parameter, value: Any, role: str) -> Any:
    """A TOML value of the right type that can work, as the setting's Python type."""
    if isinstance(value, list):
        raise ConfigError(f"{where}: a bare list is ambiguous; write {{ choices = {value} }} to search among them")
    if (isinstance(value, bool) and parameter.kind is not bool) or not isinstance(value, _TOML_TYPES[parameter.kind]):
        raise ConfigError(f"{where}: {role} {value!r} is not {_KIND_NAMES[parameter.kind]}")
    if not parameter.valid(value):
        raise ConfigError(f"{where}: {role} {value!r} cannot work; it must be {parameter.rule}")
    return float(value) if parameter.kind is float else value


def _distribution(where: str, parameter: Parameter, table: dict[str, Any]) -> BaseDistribution:
    keys = set(table)
    if "choices" in keys:
        if keys != {"choices"}:
            raise ConfigError(f"{where}: give choices or a range (low, high), not both; got {sorted(keys)}")
        choices = table["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices is empty; list at least one value, e.g. choices = [...]")
        values = [_checked(where, parameter, choice, "choice") for choice in choices]
        if len(set(values)) < len(values):
            raise ConfigError(f"{where}: choices {choices} repeat a value; list each once")
        return CategoricalDistribution(values)
    unknown = keys - {"low", "high", "log", "step"}
    if unknown or not {"low", "high"} <= keys:
        raise ConfigError(
            f"{where}: a range is {{ low = ..., high = ... }} with optional log = true or step = ...; "
            f"got keys {sorted(keys)}" + (f" ({', '.join(sorted(unknown))} unknown)" if unknown else "")
        )
    if parameter.kind in (bool, str):
        raise ConfigError(
            f"{where}: {_KIND_NAMES[parameter.kind]} setting takes choices = [...] or a value, not a range"
        )
    low, high = _checked(where, parameter, table["low"], "low"), _checked(where, parameter, table["high"], "high")
    log, step = table.get("log", False), table.get("step")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    if low > high:
        raise ConfigError(f"{where}: low ({low}) is above high ({high}); swap them")
    if log and low <= 0:
        raise ConfigError(
            f"{where}: a log range needs low > 0 (the log of {low} is undefined); raise low or drop log = true"
        )
    if step is not None:
        if log:
            raise ConfigError(f"{where}: use log = true or step, not both")
        if isinstance(step, bool) or not isinstance(step, _TOML_TYPES[parameter.kind]) or step <= 0:
            raise ConfigError(f"{where}: step must be a positive {_KIND_NAMES[parameter.kind][2:]}, got {step!r}")
        intervals = (high - low) / step
        if abs(intervals - round(intervals)) > 1e-9:
            raise ConfigError(f"{where}: high - low ({high - low:g}) is not a multiple of step ({step}); adjust high")
    if parameter.kind is int:
        return IntDistribution(low, high, log=log, step=step or 1)
    return FloatDistribution(low, high, log=log, step=None if step is None else float(step))


def _possible_values(name: str, distributions: dict[str, BaseDistribution], fixed: dict[str, Any]) -> list:
    """The values a setting can take: enough to decide whether a dependent setting is ever used."""
    if name in fixed:
        return [fixed[name]]
    distribution = distributions.get(name)
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    if distribution is not None:
        return [distribution.low, distribution.high]
    return [BUILD_DEFAULTS.get(name, 0.0)]


def augment_spec(strength: float) -> str | None:
    """augment_strength in [0, 1] as an augment spec for `cnnlab train`: 0 is none, 1 the strongest."""
    if strength <= 0:
        return None
    return f"rotation={20 * strength:.3g},shift={0.15 * strength:.3g},flip"


def augmentation_for_strength(strength: float, seed: int) -> Augmentation | None:
    spec = augment_spec(strength)
    return parse_augment_spec(spec, seed=seed) if spec else None


RAY_TRIAL_KEY = "optuna_trial"  # carries a Ray trial's Optuna trial number in its configuration
