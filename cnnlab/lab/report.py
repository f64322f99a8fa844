"""Render the lab's sections as a self-contained HTML report and its Markdown twin.

The HTML file carries everything it shows: figures are embedded as base64 data URIs and the style
sheet is inline, so it opens offline, can be mailed as one file, and loads nothing from the network.
The Markdown file links the PNGs in ``figures/`` next to it. Text in sections (intros, answers) is
Markdown; the HTML renders it with markdown-it with raw HTML disabled, so no text can inject markup.

"""

from __future__ import annotations

import base64
import html
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from markdown_it import MarkdownIt

from cnnlab.core.files import write_text
from cnnlab.core.tables import markdown_table
from cnnlab.data.cifar import LOSSY_COST, unofficial_copy
from cnnlab.lab.context import LabContext
from cnnlab.lab.progress import format_duration
from cnnlab.lab.store import Section, Table

_MARKDOWN = MarkdownIt("commonmark", {"html": False})
_STYLE = """
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       max-width: 1100px; margin: 0 auto; padding: 1rem 1.5rem 4rem; color: #1d2430; background: #fff; }
h1 { margin-bottom: .2rem; } h2 { border-bottom: 2px solid #d6dde8; padding-bottom: .2rem; margin-top: 2.5rem; }
.meta { color: #5a6473; font-size: .9rem; }
nav ol { columns: 2; font-size: .95rem; }
.table { overflow-x: auto; margin: .6rem 0 1.2rem; } .table-title { font-weight: 600; margin: 0 0 .3rem; }
table { border-collapse: collapse; font-size: .9rem; }
th, td { border: 1px solid #d6dde8; padding: .25rem .6rem; text-align: left; }
th { background: #f1f4f9; } tbody tr:nth-child(even) { background: #fafbfd; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #e4e8ef; }
figcaption { color: #5a6473; font-size: .9rem; }
.qa dt { font-weight: 600; margin-top: .9rem; } .qa dd { margin: .2rem 0 0 1.2rem; }
.skipped { background: #fff6e0; border-left: 4px solid #e0a100; padding: .6rem 1rem; }
.missing { color: #a33; }
.took { color: #5a6473; font-size: .8rem; }
code { background: #f1f4f9; padding: 0 .2rem; border-radius: 3px; }
"""


@dataclass
class ReportInfo:
    """What the report's header says about the run as a whole."""

    mode: str  # full, quick or tiny
    dataset: dict | None  # LabData.source: where CIFAR-10 came from and whether it is the official archive
    generated: str = ""
    machine: str = ""

    def __post_init__(self):
        self.generated = self.generated or time.strftime("%Y-%m-%d %H:%M")
        self.machine = self.machine or f"{platform.node()} ({platform.processor() or platform.machine()})"

    @classmethod
    def for_run(cls, ctx: LabContext, sections: list[Section]) -> ReportInfo:
        """The run's size, and where CIFAR-10 came from: the data loaded now, else what a reused part recorded."""
        dataset = (
            ctx.cache["data"].source
            if "data" in ctx.cache
            else next((s.facts["source"] for s in sections if isinstance(s.facts.get("source"), dict)), None)
        )
        return cls(ctx.mode, dataset)


def dataset_sentence(source: dict | None) -> str:
    """Where the images came from, and a warning when the archive is not the official one."""
    if not source:
        return "CIFAR-10 was not loaded in this run."
    if source.get("kind", "cifar10") != "cifar10":  # the user's own data set: the lab's parts run on it
        return (
            f"Data: {source.get('kind')} `{source.get('path') or source.get('source')}`, not CIFAR-10: parts and "
            "questions written for CIFAR-10 say where they do not apply."
            + (f" Note: {source['note']}." if source.get("note") else "")
        )
    copy, name = unofficial_copy(source), str(source.get("source"))
    if copy is None:
        return f"CIFAR-10 from `{name}`, the official archive (md5 verified)."
    if copy == "lossy":
        return (
            f"CIFAR-10 from `{name}`: a lossy rebuild of CIFAR-10 (its md5 differs from the official archive's). "
            f"Measured: such a copy costs {LOSSY_COST}, and a model trained on it does worse on real photos, "
            "so every accuracy in this report is lower than the original images would give."
        )
    return (
        f"CIFAR-10 from `{name}`: not the official CIFAR-10 archive (its md5 differs from the official "
        "archive's), so every accuracy in this report may differ from one measured on the original images."
    )


def _header_lines(sections: list[Section], info: ReportInfo) -> list[str]:
    took = sum(section.seconds for section in sections)
    skipped = [section.title for section in sections if section.skipped or section.missing]
    lines = [
        f"Generated {info.generated} on {info.machine}; {info.mode} run; the parts took {format_duration(took)}.",
        dataset_sentence(info.dataset),
    ]
    if skipped:
        lines.append(
            f"Skipped, wholly or in part, for missing input: {', '.join(skipped)} (each says how to provide it)."
        )
    failed = [section.title for section in sections if section.failed]
    if failed:
        lines.append(f"**Failed:** {', '.join(failed)} (each shows its error; a rerun tries it again).")
    return lines


def section_markdown(section: Section, embed_from: Path | None = None) -> str:
    """One part as Markdown. Figures link to their files, or with ``embed_from`` (the report folder) are
    embedded as data URIs, as a notebook needs them."""
    out = [f"## {section.title}", ""]
    if section.failed:
        return "\n".join([*out, f"> **Failed:** {section.failed}", ""])
    if section.skipped:
        return "\n".join([*out, f"> **Skipped:** {section.skipped}", ""])
    if section.missing:
        out += [f"> **Not done:** {section.missing}", ""]
    if section.intro:
        out += [section.intro, ""]
    for table in section.tables:
        out += [markdown_table(table.rows, table.columns, title=table.title, digits=None), ""]
    for path, caption in section.figures:
        target = _data_uri(embed_from / path) if embed_from is not None else path
        out += [f"![{caption}]({target})", f"*{caption}*", ""]
    if section.answers:
        out += ["### Questions", ""]
        for question, answer in section.answers:
            out += [f"**{question}**", "", answer, ""]
    out += [f"<sub>Part took {format_duration(section.seconds)}.</sub>", ""]
    return "\n".join(out)


def render_markdown(sections: list[Section], info: ReportInfo, title: str = "CNN lab report") -> str:
    out = [f"# {title}", ""]
    for line in _header_lines(sections, info):
        out += [line, ""]
    return "\n".join(out + [section_markdown(section) for section in sections])


def _data_uri(file: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(file.read_bytes()).decode("ascii")


def _anchor(section: Section) -> str:
    return f"part-{section.key}"


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(str(column))}</th>" for column in table.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in table.rows
    )
    return (
        f'<div class="table"><p class="table-title">{html.escape(table.title)}</p>'
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def _html_figure(out: Path, path: str, caption: str) -> str:
    file = out / path
    if not file.is_file():
        return f'<p class="missing">Figure {html.escape(path)} is missing; rerun this part with --fresh.</p>'
    return (
        f'<figure><img src="{_data_uri(file)}" alt="{html.escape(caption, quote=True)}">'
        f"<figcaption>{_MARKDOWN.renderInline(caption)}</figcaption></figure>"
    )


def _html_section(section: Section, out: Path) -> str:
    parts = [f'<section id="{_anchor(section)}"><h2>{html.escape(section.title)}</h2>']
    for label, text in (("Failed", section.failed), ("Skipped", section.skipped)):
        if text:
            parts.append(f'<p class="skipped"><strong>{label}:</strong> {_MARKDOWN.renderInline(text)}</p>')
            return "".join(parts) + "</section>"
    if section.missing:
        parts.append(f'<p class="skipped"><strong>Not done:</strong> {_MARKDOWN.renderInline(section.missing)}</p>')
    if section.intro:
        parts.append(_MARKDOWN.render(section.intro))
    parts += [_html_table(table) for table in section.tables]
    parts += [_html_figure(out, path, caption) for path, caption in section.figures]
    if section.answers:
        parts.append('<h3>Questions</h3><dl class="qa">')
        for question, answer in section.answers:
            parts.append(f"<dt>{_MARKDOWN.renderInline(question)}</dt><dd>{_MARKDOWN.render(answer)}</dd>")
        parts.append("</dl>")
    parts.append(f'<p class="took">Part took {format_duration(section.seconds)}.</p></section>')
    return "".join(parts)


def render_html(sections: list[Section], out: Path, info: ReportInfo, title: str = "CNN lab report") -> str:
    """One HTML document with every figure of ``out`` embedded; nothing in it refers outside the file."""
    contents = "".join(
        f'<li><a href="#{_anchor(section)}">{html.escape(section.title)}</a>'
        + (" (failed)" if section.failed else " (skipped)" if section.skipped else "")
        + "</li>"
        for section in sections
    )
    header = "".join(f'<p class="meta">{_MARKDOWN.renderInline(line)}</p>' for line in _header_lines(sections, info))
    body = "".join(_html_section(section, out) for section in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{header}<nav><ol>{contents}</ol></nav>{body}</body></html>\n"
    )


def write_report(sections: list[Section], out: Path, info: ReportInfo) -> tuple[Path, Path]:
    """Write report.html (self-contained) and report.md (figures linked) into ``out``, atomically."""
    out.mkdir(parents=True, exist_ok=True)
    html_path, markdown_path = out / "report.html", out / "report.md"
    for path, text in ((html_path, render_html(sections, out, info)), (markdown_path, render_markdown(sections, info))):
        write_text(path, text)
    return html_path, markdown_path
