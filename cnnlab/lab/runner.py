"""Running the lab: the parts found in this package in order, each stored when done, each failure reported.

A part that raises is reported in its own section and the others still run: an hour of results is not
lost to one part's bug. KeyboardInterrupt is not an Exception, so Ctrl-C still stops the whole lab.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

from cnnlab.core.locks import folder_lock
from cnnlab.lab.context import LabContext, Part, PartSkipped
from cnnlab.lab.progress import LabProgress, TimeLeft, format_duration, load_estimates, part_module, store_duration
from cnnlab.lab.store import CorruptPart, Section, read_stored_part, store_part


def discover_parts() -> list[tuple[str, Part]]:
    """The parts in lab order: every module named pN_something in this package, sorted by N."""
    import importlib
    import pkgutil

    names = [
        m.name
        for m in pkgutil.iter_modules([str(Path(__file__).parent)])
        if m.name[:1] == "p" and m.name[1:2].isdigit()
    ]
    names.sort(key=lambda name: int(name[1:].split("_")[0]))
    return [(name.split("_", 1)[1], importlib.import_module(f"{__package__}.{name}").run) for name in names]


def _title_of(key: str, part: Part) -> str:
    """A skipped part's heading: the first line of its module's docstring (e.g. "Part 7: ...")."""
    doc = getattr(part_module(part), "__doc__", None) or ""
    return doc.strip().splitlines()[0].rstrip(".") if doc.strip() else key


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


def _failed(ctx: LabContext, index: int, key: str, part: Part, error: Exception, progress: LabProgress) -> Section:
    """A part that raised: its traceback goes to OUT/logs/KEY-error.log and stderr, its error to its section.

    Nothing is stored, so the next run tries the part again; the command exits non-zero (see cli/lab.py).
    """
    log = ctx.path("logs", f"{key}-error.log")
    log.write_text("".join(traceback.format_exception(error)), encoding="utf-8")
    message = f"{type(error).__name__}: {error}"
    progress.log(log.read_text(encoding="utf-8").rstrip())
    progress.finish(index, key, None, f"FAILED: {message} (traceback in {log})")
    return Section(key=key, title=_title_of(key, part), failed=f"{message} (the traceback is in `{log}`)")


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
    except Exception as error:  # noqa: BLE001 - one part's bug must not cost the others; Ctrl-C still stops
        return _failed(ctx, index, key, part, error, progress)
    section.seconds = time.perf_counter() - started
    if section.missing:  # not stored: once the input is provided, the next run completes the part
        progress.finish(index, key, section.seconds, f"done without some input: {section.missing}")
        return section
    store_part(stored, ctx.mode, section)
    store_duration(ctx.mode, key, section.seconds)
    progress.finish(index, key, section.seconds, f"finished in {format_duration(section.seconds)}")
    return section
