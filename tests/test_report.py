"""The HTML report and its Markdown twin: self-contained, escaped, honest about skipped parts and the data."""

from __future__ import annotations

import base64
import re

import pytest
from PIL import Image

from cnnlab.lab.report import ReportInfo, dataset_sentence, render_html, render_markdown, write_report
from cnnlab.lab.store import Section, Table

LOSSY = {"source": "/data/cifar-10-binary-lossy.tar.xz", "md5": "abc", "official": False}
OFFICIAL = {"source": "official download", "md5": "c58f30108f718f92721af3b95e74349a", "official": True}


@pytest.fixture
def out(tmp_path):
    (tmp_path / "figures").mkdir()
    Image.new("RGB", (40, 20), (200, 30, 30)).save(tmp_path / "figures" / "red.png")
    return tmp_path


def _sections() -> list[Section]:
    return [
        Section(
            key="demo",
            title="Part 1: Demo",
            intro="Measured with **care** on `ascent`.",
            figures=[("figures/red.png", "A red <b>box</b>")],
            tables=[Table("Shapes", ["filter", "same"], [["Sobel | X", "512 x 512"], ["<script>", 3]])],
            answers=[("1. What <i>is</i> it?", "It is 7.92 <script>alert(1)</script> grey levels.")],
            seconds=12.0,
        ),
        Section(key="resnet", title="Part 7: Pre-trained", skipped="no photos were given; pass --photos DIR"),
    ]


def test_html_embeds_figures_and_escapes_every_text(out):
    page = render_html(_sections(), out, ReportInfo("quick", LOSSY))
    image = re.search(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]*)"', page)
    assert base64.b64decode(image.group(1)) == (out / "figures" / "red.png").read_bytes()
    assert image.group(2) == "A red &lt;b&gt;box&lt;/b&gt;"
    assert "<script>" not in page and "<b>" not in page and "<i>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<strong>care</strong>" in page and "<code>ascent</code>" in page  # intros and answers are Markdown
    assert "<td>Sobel | X</td>" in page


def test_html_points_nowhere_outside_itself(out):
    page = render_html(_sections(), out, ReportInfo("full", OFFICIAL))
    assert "<link" not in page and "<script" not in page and "@import" not in page
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    assert re.findall(r'href="#([^"]+)"', page) == ["part-demo", "part-resnet"]
    assert 'id="part-demo"' in page and 'id="part-resnet"' in page


def test_skipped_and_incomplete_parts_say_why(out):
    sections = _sections()
    sections.append(Section(key="carbon", title="Part 6: Carbon", missing="tracking was off; drop --no-carbon"))
    page = render_html(sections, out, ReportInfo("quick", LOSSY))
    markdown = render_markdown(sections, ReportInfo("quick", LOSSY))
    for text in (page, markdown):
        assert "Skipped" in text and "no photos were given; pass --photos DIR" in text
        assert "Not done" in text and "drop --no-carbon" in text
        assert "Part 7: Pre-trained, Part 6: Carbon" in text


def test_a_missing_figure_is_reported_not_broken(out):
    (out / "figures" / "red.png").unlink()
    page = render_html(_sections(), out, ReportInfo("quick", LOSSY))
    assert "<img" not in page
    assert "Figure figures/red.png is missing" in page


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (LOSSY, "costs about 4-5 accuracy points against the exact pixels, and a model trained on it does worse"),
        ({**LOSSY, "source": "/data/my-cifar.tar.gz"}, "not the official CIFAR-10 archive"),
        (OFFICIAL, "the official archive (md5 verified)"),
        (None, "CIFAR-10 was not loaded in this run"),
    ],
)
def test_dataset_sentence_names_the_source_and_warns_when_not_official(source, expected):
    sentence = dataset_sentence(source)
    assert expected in sentence
    warns = "may differ" in sentence or "lower than the original images would give" in sentence
    assert warns == bool(source and not source["official"])


def test_write_report_writes_html_and_markdown_twins(out):
    info = ReportInfo("tiny", LOSSY, generated="2025-03-10 09:00", machine="lab-pc (x86_64)")
    html_path, markdown_path = write_report(_sections(), out, info)
    markdown = markdown_path.read_text()
    assert markdown.startswith("# CNN lab report\n\nGenerated 2025-03-10 09:00 on lab-pc (x86_64); tiny run")
    assert "![A red <b>box</b>](figures/red.png)" in markdown
    assert "| Sobel \\| X | 512 x 512 |" in markdown
    assert "**1. What <i>is</i> it?**" in markdown
    assert html_path.read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in out.iterdir()) == ["figures", "report.html", "report.md"]
