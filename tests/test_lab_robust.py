"""`cnnlab lab` off its beaten path: a part that fails, non-square photos, and part 9's choice of network."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_lab import _one_torch_thread, _private_cache  # noqa: F401 - the lab tests' autouse fixtures

from cnnlab.cli import main
from cnnlab.data.split import LabData
from cnnlab.lab import p5_generalization
from cnnlab.lab.context import LabContext, downscaled_for_lab
from cnnlab.lab.report import ReportInfo, render_markdown
from cnnlab.lab.runner import run_parts
from cnnlab.lab.store import Section


def photo_like_data(height: int, width: int, n_train: int = 96, n_eval: int = 32, classes: int = 3) -> LabData:
    """uint8 images of height x width; class k has a bright band in the k-th third of the rows."""
    rng = np.random.default_rng(0)

    def images(count: int):
        labels = rng.integers(0, classes, count)
        x = rng.integers(0, 100, (count, height, width, 3)).astype(np.uint8)
        band = height // classes
        for i, k in enumerate(labels):
            x[i, band * k : band * (k + 1)] = 230
        return x, labels

    parts = [images(n) for n in (n_train, n_eval, n_eval)]
    source = {"kind": "folder", "path": "/photos", "source": "/photos"}
    return LabData(*parts[0], *parts[1], *parts[2], source, ("cat", "dog", "owl"))


def tiny_context(out, data=None, **options) -> LabContext:
    ctx = LabContext(out=out, tiny=True, device="cpu", carbon=False, **options)
    if data is not None:
        ctx.cache["data"] = ctx.cache["native_data"] = data
    return ctx


# --------------------------------------------------------------------------- a failing part


def test_a_failing_part_is_reported_in_its_section_and_the_others_run(tmp_path, capsys):
    ran = []

    def broken(ctx):
        raise ValueError("the part has a bug")

    def later(ctx):
        ran.append(ctx.mode)
        return Section(key="later", title="Later")

    failed, after = run_parts(tiny_context(tmp_path), [("broken", broken), ("later", later)], live=False)
    assert failed.failed.startswith("ValueError: the part has a bug (the traceback is in ")
    assert ran == ["tiny"] and after.failed == ""
    assert not (tmp_path / "parts" / "broken.json").exists() and (tmp_path / "parts" / "later.json").exists()
    log = (tmp_path / "logs" / "broken-error.log").read_text()
    assert "Traceback (most recent call last)" in log and 'raise ValueError("the part has a bug")' in log
    assert "[1/2] broken: FAILED: ValueError: the part has a bug" in capsys.readouterr().err
    report = render_markdown([failed, after], ReportInfo("tiny", None))
    assert "> **Failed:** ValueError: the part has a bug" in report and f"**Failed:** {failed.title} (" in report


def test_ctrl_c_still_stops_the_lab(tmp_path):
    def interrupted(ctx):
        raise KeyboardInterrupt

    ran = []
    parts = [("interrupted", interrupted), ("later", lambda ctx: ran.append(1) or Section(key="later", title="L"))]
    with pytest.raises(KeyboardInterrupt):
        run_parts(tiny_context(tmp_path), parts, live=False)
    assert ran == []


def test_the_command_exits_non_zero_after_running_the_later_parts(tmp_path, monkeypatch, capsys):
    from cnnlab.lab import runner

    ran = []

    def broken(ctx):
        raise RuntimeError("boom")

    def later(ctx):
        ran.append(1)
        return Section(key="later", title="Part 2: Later")

    monkeypatch.setattr(runner, "discover_parts", lambda: [("broken", broken), ("later", later)])
    out = tmp_path / "report"
    assert main(["lab", "--tiny", "--no-carbon", "--out", str(out)]) == 1
    assert ran == [1]
    assert "> **Failed:** RuntimeError: boom" in (out / "report.md").read_text()
    assert "1 part(s) failed: broken" in capsys.readouterr().err
    monkeypatch.setattr(runner, "discover_parts", lambda: [("later", later)])
    assert main(["lab", "--tiny", "--no-carbon", "--out", str(out)]) == 0


# --------------------------------------------------------------------------- non-square images


def test_large_images_are_downscaled_for_the_lab_cnns_and_the_report_says_so():
    data = photo_like_data(170, 256, n_train=6, n_eval=3)
    small = downscaled_for_lab(data)
    assert small.x_train.shape == (6, 42, 64, 3) and small.input_shape == (42, 64, 3)
    assert small.x_train.dtype == np.uint8 and small.source["lab_resize"] == {"from": [170, 256], "to": [42, 64]}
    assert "downscaled from 170x256 to 42x64" in small.source["note"]
    assert downscaled_for_lab(photo_like_data(32, 48, n_train=6, n_eval=3)).x_train.shape == (6, 32, 48, 3)


def test_part5_turns_non_square_images_upside_down_and_says_why(tmp_path):
    data = photo_like_data(24, 40)
    section = p5_generalization.run(tiny_context(tmp_path, data))
    facts = section.facts
    answer = dict(section.answers)[next(q for q, _ in section.answers if q.startswith("24."))]
    assert facts["rotated"]["degrees"] == 180
    assert answer.startswith("The images are 24x40, not square: turned 90 degrees they would be 40x24")
    assert f"{facts['rotated']['rotated']:.1%} on the same images turned 180 degrees" in answer
    assert list(facts["sizes"]) == ["18x30", "24x40", "36x60", "48x80"]
    sizes_answer = dict(section.answers)[next(q for q, _ in section.answers if q.startswith("29."))]
    assert f"{facts['sizes']['36x60']:.1%} at 36 x 60" in sizes_answer
    assert (
        "Flatten turns the last 6 x 10 x 32 feature map into 1,920 numbers"
        in dict(section.answers)[next(q for q, _ in section.answers if q.startswith("28."))]
    )
    assert section.tables[0].columns[-1] == "turned 180 degrees"


# --------------------------------------------------------------------------- part 9's choice and question 35


@pytest.fixture
def untrained_imagenet(monkeypatch):
    """An untrained ResNet50 stands in for the ImageNet weights: the wiring, not the accuracy, is tested."""
    from cnnlab.models import resnet50, resnet50_classifier

    monkeypatch.setattr(resnet50_classifier, "imagenet_backbone", lambda config: (resnet50.ResNet50(), "w", "0" * 64))


def test_part9_fine_tunes_resnet50_on_a_photo_folder_and_says_why(tmp_path, untrained_imagenet):
    from cnnlab.lab import p9_best

    data = photo_like_data(64, 96, n_train=48, n_eval=12)
    section = p9_best.run(tiny_context(tmp_path, data))
    facts, answers = section.facts, dict(section.answers)
    assert facts["chosen"] == "pretrained" and facts["scratch"] is None
    assert not (tmp_path / "runs" / p9_best.SCRATCH_RUN).exists()  # the 32x32 recipe was not trained
    why = answers["Which network does this part train, and why?"]
    assert why.startswith("The images of `/photos` are 64x96 photos, so this part fine-tunes the ImageNet ResNet50")
    assert "1 epoch(s) of the new head on frozen ImageNet features, at 32 px" in why and why == section.intro
    pretrained = facts["pretrained"]
    assert (
        f"reaches {pretrained['test']:.1%} in {pretrained['seconds']:.0f} s"
        in answers["How high a test accuracy does it reach?"]
    )
    assert section.tables[0].rows[0][0] == "ResNet50 fine-tuned from ImageNet"


def test_part9_compares_scratch_and_pretrained_and_answers_35_from_the_measurements(tmp_path, untrained_imagenet):
    from cnnlab.lab import p9_best

    data = photo_like_data(32, 32, n_train=64, n_eval=16)
    data.source = {"source": "synthetic", "md5": None, "official": False}  # CIFAR-sized: both are trained
    ctx = tiny_context(tmp_path, data)
    ctx.carbon = True
    section = p9_best.run(ctx)
    scratch, pretrained = section.facts["scratch"], section.facts["pretrained"]
    answer = dict(section.answers)[next(q for q, _ in section.answers if q.startswith("35."))]
    for side in (scratch, pretrained):
        assert side["energy_kwh"] > 0 and side["seconds"] > 0
        assert f"{side['test']:.1%} in {side['seconds']:.0f} s ({side['energy_kwh']:.2e} kWh, " in answer
        assert f"kWh, {side['co2eq_g']:.3g} g CO2eq)" in answer
    ratio = pretrained["energy_kwh"] / scratch["energy_kwh"]
    assert f"cost {ratio:.2f}x the energy of training from scratch" in answer
    assert f"{pretrained['test'] - scratch['test']:+.1%} points" in answer
    table = section.tables[0]
    assert [row[0] for row in table.rows] == ["recipe 'fast5' from scratch", "ResNet50 fine-tuned from ImageNet"]
    assert table.rows[0][1] == "1 epochs, 2 network(s)" and "for 1 of its 18 epochs" in section.intro
    cost = json.loads((tmp_path / "runs" / "pretrained_resnet50" / "cost.json").read_text())
    assert cost["energy_kwh"] == pretrained["energy_kwh"]
    again = p9_best.run(ctx)  # the finished recipe run is reused with its measured cost
    assert again.facts["scratch"]["seconds"] == scratch["seconds"]
