"""The lab, part by part, as measured sections of a report.

Each module ``pN_*.py`` in this package is one part of the lab; its ``run(ctx)`` takes the shared
``LabContext`` and returns a ``Section``: the figures
it drew, the tables it measured and the lab's questions answered from those measurements. Finished
parts are stored as JSON under ``OUT/parts/``, so a rerun (or a run resumed after a kill) redoes only
what is missing; training runs inside a part resume from their own checkpoints.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cnnlab.training import write_json


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

    @classmethod
    def from_json(cls, data: dict) -> Section:
        data = dict(data)
        data["tables"] = [Table(**t) for t in data.get("tables", [])]
        data["figures"] = [tuple(f) for f in data.get("figures", [])]
        data["answers"] = [tuple(a) for a in data.get("answers", [])]
        return cls(**data)


@dataclass
class LabContext:
    out: Path
    quick: bool = False
    data_source: str | None = None
    device: str = "auto"
    carbon: bool = True
    cache: dict = field(default_factory=dict)  # data and models shared between parts of one process

    def path(self, *parts: str) -> Path:
        target = self.out.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def epochs(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def training_callbacks(self) -> list:
        """Callbacks every training run of the lab gets (carbon tracking when it is on)."""
        return []

    def lab_data(self):
        if "data" not in self.cache:
            from cnnlab.data import load_lab_data

            self.cache["data"] = load_lab_data(self.data_source)
        return self.cache["data"]


Part = Callable[[LabContext], Section]


def discover_parts() -> list[tuple[str, Part]]:
    """The parts in lab order: every module named pN_something in this package, sorted by N."""
    import importlib
    import pkgutil

    names = [m.name for m in pkgutil.iter_modules(__path__) if m.name[:1] == "p" and m.name[1:2].isdigit()]
    names.sort(key=lambda name: int(name[1:].split("_")[0]))
    return [(name.split("_", 1)[1], importlib.import_module(f"{__name__}.{name}").run) for name in names]


def run_parts(ctx: LabContext, parts: list[tuple[str, Part]], progress=print) -> list[Section]:
    """Run each part unless its result is stored already (for the same --quick setting)."""
    sections = []
    for index, (key, part) in enumerate(parts, 1):
        stored = ctx.out / "parts" / f"{key}.json"
        if stored.exists():
            saved = json.loads(stored.read_text())
            if saved.get("quick") == ctx.quick:
                progress(f"[{index}/{len(parts)}] {key}: done in an earlier run, reused")
                sections.append(Section.from_json(saved["section"]))
                continue
        progress(f"[{index}/{len(parts)}] {key}: running")
        started = time.perf_counter()
        section = part(ctx)
        section.seconds = time.perf_counter() - started
        stored.parent.mkdir(parents=True, exist_ok=True)
        write_json(stored, {"quick": ctx.quick, "section": asdict(section)})
        progress(f"[{index}/{len(parts)}] {key}: finished in {section.seconds:.0f} s")
        sections.append(section)
    return sections
