"""The lab's HTML report in a real headless browser (Debian's chromium, installed by scripts/install_chromium.sh).

The report carries no script of its own; the test loads a copy with a small probe appended that records,
once the page has loaded, how many <img> elements decoded (naturalWidth > 0). Chromium prints the page's
console messages on stderr (--enable-logging=stderr), so any message from the page fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import require_path
from PIL import Image

from cnnlab.lab import LabContext, Section, p1_convolution, p3_data, run_parts
from cnnlab.report import ReportInfo, write_report

pytestmark = pytest.mark.browser

CHROMIUM = Path(os.environ.get("CNNLAB_CHROMIUM", "/usr/bin/chromium"))
PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter((img) => !(img.complete && img.naturalWidth > 0));
  document.body.dataset.images = broken.length ? "broken:" + broken.length : "ok:" + images.length;
});
</script>"""


@pytest.fixture(scope="module")
def chromium() -> Path:
    return require_path(CHROMIUM, "chromium (run scripts/install_chromium.sh)")


@pytest.fixture(scope="module")
def report(tmp_path_factory, scipy_ascent, cifar10_archive, session_cache) -> Path:
    """A real report: parts 1 and 3 run on tiny settings, plus a part skipped for a missing input."""
    out = tmp_path_factory.mktemp("lab")
    ctx = LabContext(out=out, tiny=True, data_source=cifar10_archive, carbon=False)
    sections = run_parts(ctx, [("convolution", p1_convolution.run), ("data", p3_data.run)], live=False)
    sections.append(Section(key="resnet", title="Part 7: Pre-trained 2D CNNs", skipped="no photos were given; ..."))
    html_path, _ = write_report(sections, out, ReportInfo("tiny", ctx.lab_data().source))
    return html_path


def _run_chromium(chromium: Path, profile: Path, *arguments: str) -> subprocess.CompletedProcess:
    command = [
        str(chromium),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # the report must not need the network: make it unreachable
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *arguments,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)


def _load(chromium: Path, html_text: str, folder: Path) -> tuple[str, list[str]]:
    """Open the page with the probe appended; return the probe's verdict and the page's console lines."""
    page = folder / "probed.html"
    page.write_text(html_text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    result = _run_chromium(chromium, folder / "profile", "--dump-dom", page.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    verdict = re.search(r'data-images="([^"]*)"', result.stdout)
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line and page.name in line]
    return (verdict.group(1) if verdict else "no verdict: the load event never ran"), console


def test_report_is_self_contained(report):
    text = report.read_text()
    assert "<script" not in text and "<link" not in text
    assert not re.search(r'(src|href)="(?!data:|#)', text), "every image is a data URI and every link an anchor"
    assert text.count('<img src="data:image/png;base64,') == 2  # ascent's responses and the CIFAR-10 samples


def test_every_image_is_displayed_without_console_errors(chromium, report, tmp_path):
    text = report.read_text()
    verdict, console = _load(chromium, text, tmp_path)
    assert verdict == f"ok:{text.count('<img ')}"
    assert console == []


def test_the_probe_notices_a_broken_image_and_a_page_error(chromium, report, tmp_path):
    broken = report.read_text().replace(
        "</body>", '<img src="data:image/png;base64,AAAA" alt="broken"><script>undefinedCall()</script></body>'
    )
    verdict, console = _load(chromium, broken, tmp_path)
    assert verdict == "broken:1"
    assert any("undefinedCall" in line for line in console)


def test_screenshot_shows_the_report(chromium, report, tmp_path):
    shot = tmp_path / "report.png"
    result = _run_chromium(
        chromium, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,2400", report.as_uri()
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1200, 2400)
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert pixels.std() > 20, "the screenshot is (nearly) blank"
    if os.environ.get("CNNLAB_ARTIFACTS"):
        artifacts = Path(os.environ["CNNLAB_ARTIFACTS"])
        artifacts.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, artifacts / "lab-report-screenshot.png")
