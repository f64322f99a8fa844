"""Render the lab's sections as a Markdown report (figures as relative links)."""

from __future__ import annotations

import platform
import time
from pathlib import Path

from cnnlab.lab import Section, Table
from cnnlab.training import _atomic_write


def _markdown_table(table: Table) -> str:
    lines = [f"**{table.title}**", "", "| " + " | ".join(table.columns) + " |",
             "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in table.rows]
    return "\n".join(lines)


def render_markdown(sections: list[Section], title: str = "CNN lab report") -> str:
    out = [f"# {title}", "", f"Generated {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} "
           f"({platform.processor() or platform.machine()}).", ""]
    for section in sections:
        out += [f"## {section.title}", ""]
        if section.intro:
            out += [section.intro, ""]
        for table in section.tables:
            out += [_markdown_table(table), ""]
        for path, caption in section.figures:
            out += [f"![{caption}]({path})", f"*{caption}*", ""]
        if section.answers:
            out += ["### Questions", ""]
            for question, answer in section.answers:
                out += [f"**{question}**", "", answer, ""]
        out += [f"<sub>Part took {section.seconds:.0f} s.</sub>", ""]
    return "\n".join(out)


def write_report(sections: list[Section], out: Path) -> Path:
    path = out / "report.md"
    text = render_markdown(sections)
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path
