"""The lab's live progress display: one line per part, with time left from this machine's past durations."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from cnnlab.core.files import cache_dir, write_json
from cnnlab.lab.context import Part

DEFAULT_ESTIMATE = {"full": 60.0, "quick": 20.0, "tiny": 5.0}
DURATIONS_FILE = "lab-durations.json"


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
        declared = getattr(part_module(part), "ESTIMATED_SECONDS", {})
        estimates[key] = float(stored.get(key) or declared.get(mode) or DEFAULT_ESTIMATE[mode])
    return estimates


def store_duration(mode: str, key: str, seconds: float) -> None:
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


def part_module(part: Part):
    return sys.modules.get(getattr(part, "__module__", ""), None)
