"""What a lab part returns (a ``Section`` of text, tables and figures) and how finished parts are stored.

Stored parts are checksummed JSON, so a rerun or a resumed run redoes only what is missing and a damaged
file is run again rather than trusted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cnnlab.core.files import write_json


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
    failed: str = ""  # the error that stopped the part (its traceback is in the log); never stored

    @classmethod
    def from_json(cls, data: dict) -> Section:
        data = dict(data)
        data["tables"] = [Table(**t) for t in data.get("tables", [])]
        data["figures"] = [tuple(f) for f in data.get("figures", [])]
        data["answers"] = [tuple(a) for a in data.get("answers", [])]
        return cls(**data)


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
