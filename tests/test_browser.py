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

from cnnlab.evaluate.metrics import misclassified
from cnnlab.lab import p1_convolution, p3_data, p4_cnn, p5_generalization, p7_resnet
from cnnlab.lab.context import LabContext
from cnnlab.lab.report import ReportInfo, write_report
from cnnlab.lab.runner import run_parts
from cnnlab.lab.store import Section
from cnnlab.models.resnet50 import ResNet50

pytestmark = pytest.mark.browser

CHROMIUM = Path(os.environ.get("CNNLAB_CHROMIUM", "/usr/bin/chromium"))
PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const broken = images.filter((img) => !(img.complete && img.naturalWidth > 0));
  document.body.dataset.images = broken.length ? "broken:" + broken.length : "ok:" + images.length;
});
</script>"""

# Every figure the report fixture draws, in report order: parts 1 and 3 as they run, and the figures
# parts 4, 5 and 7 add to see inside the network (drawn by the parts' own code on part 1's tiny run E).
EXPECTED_FIGURES = [
    "convolution_same.png",
    "learned_filters.png",
    "samples.png",
    "feature_maps.png",
    "gradcam_mistakes.png",
    "gradcam_correct.png",
    "top_losses.png",
    "resnet_photos.png",
    "resnet_gradcam.png",
]


@pytest.fixture(scope="module")
def chromium() -> Path:
    return require_path(CHROMIUM, "chromium (run scripts/install_chromium.sh)")


def _inside_the_network(ctx: LabContext, photos_dir: Path) -> list[Section]:
    """Parts 4, 5 and 7's figures of the network's inside, without training parts 4 and 5's other runs:
    part 1's tiny run E stands in for their models, an untrained ResNet50 for the ImageNet weights."""
    data, model = ctx.lab_data(), ctx.cache["models"]["E"]
    figure, table, _, _ = p4_cnn.feature_maps_of_one_image(ctx, "E", model)
    cnn = Section(key="cnn", title="Part 4: 2D CNN", figures=[figure], tables=[table])
    probabilities = model.predict(data.x_test)
    generalization = p5_generalization.explain_mistakes(
        ctx, model, probabilities, misclassified(data.y_test, probabilities)
    )
    generalization.title = "Part 5: Model generalization"
    ctx.photos = ctx.path("photos", "chelsea.png").parent
    shutil.copyfile(photos_dir / "chelsea.png", ctx.photos / "chelsea.png")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(p7_resnet, "resolve_weights_path", lambda _weights: Path("untrained"))
        patch.setattr(p7_resnet, "load_resnet50", lambda *_args, **_options: ResNet50())
        resnet = p7_resnet.run(ctx)
    return [cnn, generalization, resnet]


@pytest.fixture(scope="module")
def report(tmp_path_factory, scipy_ascent, cifar10_archive, photos_dir, session_cache) -> Path:
    """A real report: parts 1 and 3 run on tiny settings, the new figures of parts 4, 5 and 7, and a part
    skipped for a missing input."""
    out = tmp_path_factory.mktemp("lab")
    ctx = LabContext(out=out, tiny=True, data_source=cifar10_archive, carbon=False)
    sections = run_parts(ctx, [("convolution", p1_convolution.run), ("data", p3_data.run)], live=False)
    sections += _inside_the_network(ctx, photos_dir)
    sections.append(Section(key="tuning", title="Part 8: Hyperparameter search", skipped="no study; ..."))
    assert [Path(path).name for section in sections for path, _ in section.figures] == EXPECTED_FIGURES
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
    assert text.count('<img src="data:image/png;base64,') == len(EXPECTED_FIGURES)


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
