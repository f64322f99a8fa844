"""The lab, part by part, as measured sections of a report.

Each module ``pN_*.py`` in this package is one part of the lab; its ``run(ctx)`` takes the shared
``LabContext`` and returns a ``Section``: the figures it drew, the tables it measured and the lab's
questions answered from those measurements. A part whose input is missing raises ``PartSkipped``
and the report says why and how to provide it. Finished parts are stored as JSON under ``OUT/parts/``,
so a rerun (or a run resumed after a kill) redoes only what is missing; training runs inside a part
resume from their own checkpoints.

A part module may set ``ESTIMATED_SECONDS = {"full": ..., "quick": ...}``: the progress display uses
it until this machine has stored how long the part really took.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from cnnlab.errors import DataError
from cnnlab.files import cache_dir, write_json
from cnnlab.locks import folder_lock

MODES = ("full", "quick", "tiny")
PHOTOS_ENV = "CNNLAB_PHOTOS"
DEFAULT_ESTIMATE = {"full": 60.0, "quick": 20.0, "tiny": 5.0}
DURATIONS_FILE = "lab-durations.json"


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list]


@dataclass
class Section:
    key: str
    title: str
    intro: str = ""
    figures: list[tuple[str, str]] = field(default_factory=list)  # (path relative to OUT, caption)
    tables: list[Table] = field(default_factory=list)
    answers: list[tuple[str, str]] = field(default_factory=list)  # (question, answer)
    facts: dict = field(default_factory=dict)  # the raw numbers the answers were made from
    seconds: float = 0.0
    skipped: str = ""  # why the part did not run and how to make it run; empty when it ran
    missing: str = ""  # inputs the part ran without (and how to provide them); such a result is not reused

    @classmethod
    def from_json(cls, data: dict) -> Section:
        data = dict(data)
        data["tables"] = [Table(**t) for t in data.get("tables", [])]
        data["figures"] = [tuple(f) for f in data.get("figures", [])]
        data["answers"] = [tuple(a) for a in data.get("answers", [])]
        return cls(**data)


class PartSkipped(Exception):
    """A part cannot run because an input is missing; the report shows ``reason`` and ``remedy``."""

    def __init__(self, reason: str, remedy: str):
        super().__init__(f"{reason}; {remedy}")
        self.reason, self.remedy = reason, remedy


@dataclass
class LabContext:
    """What every part shares: the output folder, the size of the run, the inputs and cached results.

    ``quick`` trains few epochs on the lab's data; ``tiny`` (for tests and the CI notebook) also cuts
    the data to a few hundred images and every experiment to its smallest useful form.
    """

    out: Path
    quick: bool = False
    tiny: bool = False
    data_source: str | os.PathLike | None = None
    data_options: dict = field(default_factory=dict)  # load_dataset's options: image_size, color_mode, ...
    photos: str | os.PathLike | None = None
    weights: str | os.PathLike | None = None
    device: str = "auto"
    carbon: bool = True
    cache: dict = field(default_factory=dict)  # data and models shared between parts of one process

    @property
    def mode(self) -> str:
        return "tiny" if self.tiny else "quick" if self.quick else "full"

    def path(self, *parts: str) -> Path:
        target = self.out.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def setting(self, full, quick, tiny=None):
        """The value of a setting for this run's size; tiny runs fall back to the quick value."""
        if self.tiny and tiny is not None:
            return tiny
        return quick if self.quick or self.tiny else full

    def epochs(self, full: int, quick: int) -> int:
        return self.setting(full, quick, tiny=1)

    def training_callbacks(self) -> list:
        """Callbacks every training run of the lab gets: energy and CO2 tracking unless it is off."""
        if not self.carbon:
            return []
        from cnnlab.carbon import CarbonCallback

        return [CarbonCallback(verbose=False)]

    def lab_data(self):
        """The lab's train/validation/test split of CIFAR-10 (or the data set ``data_source`` names), loaded
        once per process as uint8 (the trainer scales each batch: a quarter of float32's memory); tiny runs
        use 600/200/200."""
        if "data" not in self.cache:
            from cnnlab.data import load_lab_data

            sizes = {"n_train_val": 800, "n_test": 200} if self.tiny else {}
            try:
                self.cache["data"] = load_lab_data(self.data_source, dtype="uint8", **sizes, **self.data_options)
            except DataError as error:
                what = "CIFAR-10" if self.data_source is None else "the data"
                raise PartSkipped(f"{what} could not be loaded", str(error)) from None  # the error names path and fix
        return self.cache["data"]

    def is_cifar10(self) -> bool:
        """Whether the lab runs on CIFAR-10, the data its questions and counts are written for."""
        return self.lab_data().source.get("kind", "cifar10") == "cifar10"

    def data_name(self) -> str:
        """How the report names the data set: CIFAR-10, CIFAR-100 or the folder/file it came from."""
        source = self.lab_data().source
        kind = source.get("kind", "cifar10")
        return {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}.get(
            kind
        ) or f"`{source.get('path') or source.get('source')}`"

    def trained_model(self, key: str, build: dict, batch_size: int, epochs: int, augment=None):
        """The model of run ``key`` (folder OUT/runs/KEY) and its history (a dict of per-epoch lists).

        A run that finished in an earlier process is loaded, not fitted again (refitting would also
        overwrite its carbon record); a killed run resumes from its checkpoint; a model trained by an
        earlier part of this process is reused. ``build`` holds build_cnn's keywords (learning rate 0.01
        unless given, as in the lab).
        """
        from cnnlab.models import build_cnn, load_model

        run = self.out / "runs" / key
        models = self.cache.setdefault("models", {})
        if key not in models and _finished(run, epochs):
            models[key] = load_model(run / "weights.safetensors", device=self.device)
        if key not in models:
            data = self.lab_data()
            settings = {"learning_rate": 0.01, **build}
            model = build_cnn(
                input_shape=data.input_shape, class_names=data.class_names, device=self.device, **settings
            )
            model.fit(
                data.x_train,
                data.y_train,
                batch_size=batch_size,
                epochs=epochs,
                verbose=2,
                augment=augment,
                validation_data=(data.x_val, data.y_val),
                run_dir=run,
                resume=True,
                callbacks=self.training_callbacks(),
            )
            models[key] = model
        return models[key], read_history(run)

    def earlier_facts(self, key: str) -> dict | None:
        """The facts an earlier part stored in this output folder (None if it has not run with this size)."""
        try:
            saved = read_stored_part(self.out / "parts" / f"{key}.json")
        except (OSError, CorruptPart):
            return None
        return saved["section"]["facts"] if saved and saved.get("mode") == self.mode else None

    def photos_dir(self) -> Path:
        """The folder of the user's photos for ResNet50 (--photos or $CNNLAB_PHOTOS)."""
        given = self.photos or os.environ.get(PHOTOS_ENV)
        remedy = f"pass a folder of JPEG/PNG photos with --photos DIR or set {PHOTOS_ENV}=DIR"
        if not given:
            raise PartSkipped("no photos were given", remedy)
        folder = Path(given).expanduser()
        if not folder.is_dir():
            raise PartSkipped(f"the photos folder {folder} does not exist", remedy)
        return folder


def accuracy_caveat(source: dict) -> str:
    """The note an accuracy needs when it was measured on a copy of CIFAR-10 that is not the official one."""
    if source.get("official") or source.get("kind", "cifar10") != "cifar10":
        return ""
    return (
        " (on a lossy copy of CIFAR-10)"
        if "lossy" in str(source.get("source")).lower()
        else (" (on a copy of CIFAR-10 that is not the official archive)")
    )


def _finished(run: Path, epochs: int) -> bool:
    try:
        metrics = json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return metrics.get("epochs_run", 0) >= epochs and (run / "weights.safetensors").exists()


def read_history(run: Path) -> dict[str, list[float]]:
    """A run folder's history.csv as Keras' History.history: metric name -> one value per epoch."""
    with open(run / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {name: [float(row[name]) for row in rows] for name in (rows[0] if rows else {}) if name != "epoch"}


class CorruptPart(Exception):
    """A stored part that cannot be trusted (truncated, edited or damaged): the part runs again."""


def _checksum(section: dict) -> str:
    return hashlib.sha256(json.dumps(section, sort_keys=True).encode()).hexdigest()


def store_part(path: Path, mode: str, section: Section) -> None:
    """Write a finished part with a checksum of its content, so a damaged file is caught when read."""
    content = json.loads(json.dumps(asdict(section), default=str))  # as it will read back
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"mode": mode, "section": content, "sha256": _checksum(content)})


def read_stored_part(path: Path) -> dict | None:
    """A stored part's record ({"mode", "section", ...}), verified; None if the part has not been stored.

    Raises CorruptPart when the file does not parse, does not hold a section, or its checksum disagrees.
    """
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        section = saved["section"]
        Section.from_json(section)
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CorruptPart(f"{type(error).__name__}: {error}") from error
    if "sha256" in saved and saved["sha256"] != _checksum(section):  # files of older versions have none
        raise CorruptPart("its checksum does not match its content")
    return saved


Part = Callable[[LabContext], Section]


def discover_parts() -> list[tuple[str, Part]]:
    """The parts in lab order: every module named pN_something in this package, sorted by N."""
    import importlib
    import pkgutil

    names = [m.name for m in pkgutil.iter_modules(__path__) if m.name[:1] == "p" and m.name[1:2].isdigit()]
    names.sort(key=lambda name: int(name[1:].split("_")[0]))
    return [(name.split("_", 1)[1], importlib.import_module(f"{__name__}.{name}").run) for name in names]


def _part_module(part: Part):
    return sys.modules.get(getattr(part, "__module__", ""), None)


def _title_of(key: str, part: Part) -> str:
    """A skipped part's heading: the first line of its module's docstring (e.g. "Part 7: ...")."""
    doc = getattr(_part_module(part), "__doc__", None) or ""
    return doc.strip().splitlines()[0].rstrip(".") if doc.strip() else key


class TimeLeft:
    """How long the rest of the lab will take: each part's estimate, scaled by how much faster or
    slower than estimated the parts that ran in this process were (contention, a faster machine).

    The scale starts as if ``prior_seconds`` of parts had taken exactly their estimate, so one short
    part that was quicker than its estimate does not shrink the estimates of the long ones (with a
    60 s prior, a 4 s part estimated at 30 s cut a full run's 46 minutes left to 32).
    """

    def __init__(self, estimates: dict[str, float], prior_seconds: float = 300.0):
        self.estimates = dict(estimates)
        self.pending = list(estimates)
        self._spent = self._estimated = prior_seconds

    @property
    def speed_factor(self) -> float:
        return self._spent / self._estimated if self._estimated > 0 else 1.0

    def finished(self, key: str, seconds: float | None) -> None:
        """Mark a part done; ``seconds`` is None for a part reused from an earlier run (not timed)."""
        self.pending.remove(key)
        if seconds is not None:
            self._spent += seconds
            self._estimated += self.estimates[key]

    def seconds_left(self, running: str | None = None, elapsed: float = 0.0) -> float:
        factor = self.speed_factor
        left = sum(self.estimates[key] * factor for key in self.pending if key != running)
        if running is not None:
            left += max(0.0, self.estimates[running] * factor - elapsed)
        return left


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _durations_path() -> Path:
    return cache_dir() / DURATIONS_FILE


def load_estimates(parts: list[tuple[str, Part]], mode: str) -> dict[str, float]:
    """Seconds per part: what this machine took last time, else the part's ESTIMATED_SECONDS."""
    try:
        stored = json.loads(_durations_path().read_text()).get(mode, {})
    except (OSError, ValueError):
        stored = {}
    estimates = {}
    for key, part in parts:
        declared = getattr(_part_module(part), "ESTIMATED_SECONDS", {})
        estimates[key] = float(stored.get(key) or declared.get(mode) or DEFAULT_ESTIMATE[mode])
    return estimates


def _store_duration(mode: str, key: str, seconds: float) -> None:
    path = _durations_path()
    try:
        durations = json.loads(path.read_text())
    except (OSError, ValueError):
        durations = {}
    durations.setdefault(mode, {})[key] = round(seconds, 1)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, durations)
    except OSError:  # a read-only cache only costs the next run its better estimate
        pass


class LabProgress:
    """The live display: which part runs, its elapsed time and the lab's estimated time left.

    Uses rich's progress bar on a terminal (the time left is recomputed at every redraw); every start
    and finish is also printed as a plain line, so the log of a run in the background says the same.
    """

    def __init__(self, parts: list[str], time_left: TimeLeft, live: bool = True):
        self.time_left, self.total = time_left, len(parts)
        self.running: str | None = None
        self.started = 0.0
        self.progress = Progress(
            TextColumn("[bold]lab[/bold] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            _TextColumn(self.left_text),
            console=Console(stderr=True),
            disable=not live,
        )
        self.task = self.progress.add_task("", total=len(parts))

    def __enter__(self) -> LabProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def left_text(self) -> str:
        elapsed = time.perf_counter() - self.started if self.running else 0.0
        return f"about {format_duration(self.time_left.seconds_left(self.running, elapsed))} left"

    def log(self, text: str) -> None:
        self.progress.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def start(self, index: int, key: str) -> None:
        self.running, self.started = key, time.perf_counter()
        estimate = self.time_left.estimates[key] * self.time_left.speed_factor
        self.progress.update(self.task, description=key)
        self.log(f"[{index}/{self.total}] {key}: running (estimate {format_duration(estimate)}; {self.left_text()})")

    def finish(self, index: int, key: str, seconds: float | None, note: str) -> None:
        self.running = None
        self.time_left.finished(key, seconds)
        self.progress.update(self.task, advance=1)
        self.log(f"[{index}/{self.total}] {key}: {note}")


class _TextColumn(ProgressColumn):
    """A progress column whose text a function computes at each redraw."""

    def __init__(self, text: Callable[[], str]):
        super().__init__()
        self.text = text

    def render(self, task) -> Text:
        return Text(self.text())


def run_parts(ctx: LabContext, parts: list[tuple[str, Part]], live: bool | None = None) -> list[Section]:
    """Run each part unless its result is stored already (for the same run size), with a progress display.

    ``live`` animates the bar (default: when stderr is a terminal); plain lines are printed either way.
    """
    if live is None:
        live = sys.stderr.isatty()
    time_left = TimeLeft(load_estimates(parts, ctx.mode))
    with (
        folder_lock(ctx.out, what="lab output folder"),
        LabProgress([key for key, _ in parts], time_left, live=live) as progress,
    ):
        return [_run_one(ctx, index, key, part, progress) for index, (key, part) in enumerate(parts, 1)]


def _run_one(ctx: LabContext, index: int, key: str, part: Part, progress: LabProgress) -> Section:
    stored = ctx.out / "parts" / f"{key}.json"
    try:
        saved = read_stored_part(stored)
    except CorruptPart as error:
        progress.log(f"[{index}/{progress.total}] {key}: warning: the stored result {stored} is damaged ({error}); "
                     "running the part again")  # fmt: skip
        saved = None
    if saved and saved.get("mode") == ctx.mode:
        progress.finish(index, key, None, "done in an earlier run, reused")
        return Section.from_json(saved["section"])
    progress.start(index, key)
    started = time.perf_counter()
    try:
        section = part(ctx)
    except PartSkipped as skip:
        # Not stored: once the input is provided, the next run does the part.
        progress.finish(index, key, None, f"skipped: {skip}")
        return Section(key=key, title=_title_of(key, part), skipped=str(skip))
    section.seconds = time.perf_counter() - started
    if section.missing:  # not stored: once the input is provided, the next run completes the part
        progress.finish(index, key, section.seconds, f"done without some input: {section.missing}")
        return section
    store_part(stored, ctx.mode, section)
    _store_duration(ctx.mode, key, section.seconds)
    progress.finish(index, key, section.seconds, f"finished in {format_duration(section.seconds)}")
    return section
