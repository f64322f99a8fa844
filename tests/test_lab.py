"""`cnnlab lab`: the runner (reuse, skips, time estimates) and the parts, whose answers must come from
what they measured: run a part on other inputs and its answers change with the numbers."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require_path
from safetensors.torch import save_file

from cnnlab.cli import main
from cnnlab.core.errors import DataError
from cnnlab.core.runtime import configure_threads
from cnnlab.data.split import LabData
from cnnlab.evaluate.filters import CATEGORIES, match_filters
from cnnlab.experiments.device_bench import Throughput
from cnnlab.lab import p1_convolution, p2_device, p4_cnn, p5_generalization, p6_carbon, p7_resnet, p8_tuning
from cnnlab.lab.context import LabContext, PartSkipped
from cnnlab.lab.progress import TimeLeft, load_estimates
from cnnlab.lab.report import ReportInfo, render_markdown
from cnnlab.lab.runner import discover_parts, run_parts
from cnnlab.lab.store import Section
from cnnlab.models.cnn import build_cnn


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    configure_threads()


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Stored part durations go to a temporary cache, not the user's."""
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))


def synthetic_data(seed: int, learnable: bool, n_train: int = 240, n_eval: int = 80) -> LabData:
    """Noise images; if learnable, class k also has a bright band in rows 3k..3k+2 (a rotation moves it)."""
    rng = np.random.default_rng(seed)

    def images(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 10, count)
        x = rng.normal(0, 0.3, (count, 32, 32, 3)).astype(np.float32)
        if learnable:
            for i, k in enumerate(labels):
                x[i, 3 * k : 3 * k + 3] += 1.5
        return np.clip(x, -1, 1), labels

    parts = [images(n) for n in (n_train, n_eval, n_eval)]
    source = {"source": f"synthetic-{seed}", "md5": None, "official": False}
    return LabData(*parts[0], *parts[1], *parts[2], source)


def tiny_context(out: Path, data: LabData | None = None, **options) -> LabContext:
    ctx = LabContext(out=out, tiny=True, device="cpu", carbon=False, **options)
    if data is not None:
        ctx.cache["data"] = data
    return ctx


def answers_of(section: Section) -> dict[str, str]:
    """Answers keyed by question number ("24") or, for unnumbered ones, the whole question."""
    return {question.split(".")[0] if question[:1].isdigit() else question: text for question, text in section.answers}


# --------------------------------------------------------------------------- the runner


def test_finished_parts_are_reused_and_another_run_size_reruns(tmp_path):
    calls = []

    def part(ctx):
        calls.append(ctx.mode)
        return Section(key="demo", title="Demo", facts={"mode": ctx.mode})

    first = run_parts(tiny_context(tmp_path), [("demo", part)], live=False)
    again = run_parts(tiny_context(tmp_path), [("demo", part)], live=False)
    quick = run_parts(LabContext(out=tmp_path, quick=True), [("demo", part)], live=False)
    assert calls == ["tiny", "quick"]
    assert first[0].facts == again[0].facts == {"mode": "tiny"} and quick[0].facts == {"mode": "quick"}
    assert json.loads((tmp_path / "parts" / "demo.json").read_text())["mode"] == "quick"


def test_a_part_without_its_input_is_reported_skipped_and_retried_next_time(tmp_path, capsys):
    calls = []

    def part(ctx):
        calls.append(1)
        raise PartSkipped("no photos were given", "pass --photos DIR")

    for _ in range(2):
        (section,) = run_parts(tiny_context(tmp_path), [("photos", part)], live=False)
        assert section.skipped == "no photos were given; pass --photos DIR"
    assert len(calls) == 2 and not (tmp_path / "parts").exists()
    assert "[1/1] photos: skipped: no photos were given; pass --photos DIR" in capsys.readouterr().err


def test_parts_needing_cifar10_are_skipped_when_it_cannot_be_loaded(tmp_path):
    not_cifar = tmp_path / "cifar.txt"
    not_cifar.write_text("no images here")
    ctx = tiny_context(tmp_path / "out", data_source=not_cifar)
    (section,) = run_parts(ctx, [("generalization", p5_generalization.run)], live=False)
    assert section.skipped.startswith("the data could not be loaded; ")
    assert "not an image folder, .npz or CIFAR archive" in section.skipped and "--data takes" in section.skipped


def test_progress_lines_name_the_part_and_the_time_left(tmp_path, capsys):
    parts = [
        ("first", lambda ctx: Section(key="first", title="First")),
        ("second", lambda ctx: Section(key="second", title="Second")),
    ]
    run_parts(tiny_context(tmp_path), parts, live=False)
    printed = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"\[1/2\] first: running \(estimate 5 s; about 10 s left\)", printed[0])
    assert re.fullmatch(r"\[1/2\] first: finished in \d+ s", printed[1])
    assert printed[2].startswith("[2/2] second: running")


def test_time_left_is_scaled_by_how_fast_finished_parts_were():
    clock = TimeLeft({"a": 100.0, "b": 200.0, "c": 300.0}, prior_seconds=100.0)
    assert clock.seconds_left() == 600
    clock.finished("a", 300.0)  # three times as slow as estimated: with the prior, twice the estimates
    assert clock.speed_factor == 2
    assert clock.seconds_left() == 1000
    assert clock.seconds_left(running="b", elapsed=100.0) == 300 + 600
    clock.finished("b", None)  # reused from an earlier run: says nothing about speed
    assert clock.speed_factor == 2 and clock.seconds_left() == 600
    # By default a short part that ran fast barely moves the estimate of an hour-long rest.
    clock = TimeLeft({"device": 30.0, "long": 3600.0})
    clock.finished("device", 4.0)
    assert 0.9 < clock.speed_factor < 1 and clock.seconds_left() > 3200


def test_estimates_prefer_this_machines_stored_durations(tmp_path):
    parts = [(key, run) for key, run in discover_parts() if key in ("convolution", "device")]
    declared = load_estimates(parts, "quick")
    assert declared == {
        "convolution": p1_convolution.ESTIMATED_SECONDS["quick"],
        "device": p2_device.ESTIMATED_SECONDS["quick"],
    }
    cache = Path(tmp_path / "cache")
    cache.mkdir()
    (cache / "lab-durations.json").write_text(json.dumps({"quick": {"device": 3.5}}))
    assert load_estimates(parts, "quick")["device"] == 3.5


def test_parts_are_discovered_in_lab_order():
    expected = ["convolution", "device", "data", "cnn", "generalization", "carbon", "resnet", "tuning", "best"]
    assert [key for key, _ in discover_parts()] == expected


# --------------------------------------------------------------------------- part 1 and 2


def test_part1_answers_follow_the_image(tmp_path, monkeypatch):
    image = np.random.default_rng(0).uniform(0, 255, (100, 80))
    monkeypatch.setattr(p1_convolution, "load_ascent", lambda: image)
    section = p1_convolution.run(tiny_context(tmp_path, synthetic_data(5, True, n_train=96, n_eval=32)))
    answers = answers_of(section)
    assert answers["2"].startswith("100 x 80 pixels with 1 channel")
    assert "Gaussian (sigma 4): 86 x 66 = (100 - 15 + 1) x (80 - 15 + 1)" in answers["5"]
    assert answers["4"].startswith("100 x 80 for every filter")
    assert "full response is 114 x 94" in answers["3"]
    assert section.facts["response_shapes"]["Sobel X"]["valid"] == [98, 78]
    assert (tmp_path / section.figures[0][0]).read_bytes().startswith(b"\x89PNG")


def test_part1_on_ascent(tmp_path, scipy_ascent):
    data = synthetic_data(5, True, n_train=96, n_eval=32)
    answers = answers_of(p1_convolution.run(tiny_context(tmp_path, data)))
    assert answers["2"].startswith("512 x 512 pixels with 1 channel")
    assert answers["3"].startswith("Gaussian (sigma 4) 15 x 15, Sobel X 3 x 3, Sobel Y 3 x 3.")
    assert "498 x 498" in answers["5"] and "510 x 510" in answers["5"]
    assert "Sobel X responds up to 4 and Sobel Y 0" in answers["1"]


def test_part1_matches_the_learned_filters_and_shares_run_e_with_part5(tmp_path, monkeypatch):
    monkeypatch.setattr(p1_convolution, "load_ascent", lambda: np.random.default_rng(0).uniform(0, 255, (40, 40)))
    ctx = tiny_context(tmp_path, synthetic_data(6, True, n_train=96, n_eval=32))
    whitening = np.zeros((24, 3, 2, 2), np.float32)
    whitening[:, :, 0, :], whitening[:, :, 1, :] = 1, -1  # 24 grey horizontal-edge filters
    save_file({"whiten.weight": torch.from_numpy(whitening)}, ctx.path("runs", "recipe_fast5", "weights.safetensors"))
    section = p1_convolution.run(ctx)
    facts, answers = section.facts, answers_of(section)
    learned, untrained = facts["learned_filters"], facts["untrained_filters"]
    assert sum(learned.values()) == sum(untrained.values()) == 16 and list(learned) == list(CATEGORIES)
    counts, matches = section.tables[2], section.tables[3]
    assert [row[4] for row in matches.rows].count("colour") == learned["colour"]
    assert counts.rows == [[category, learned[category], untrained[category]] for category in CATEGORIES]
    answer = answers["Does a trained CNN learn filters like these by itself?"]
    assert f"{learned['edge']} are closest to an edge detector" in answer and f"{learned['colour']} respond" in answer
    assert f"had {untrained['edge']} are closest" in answer
    # The untrained column is the trained model's own starting point: build_cnn with the same seed.
    initial = build_cnn(**p4_cnn.LAB_RUNS["E"][1], device="cpu").network.conv2d_1.weight
    model = ctx.cache["models"]["E"]
    assert not torch.equal(initial, model.network.conv2d_1.weight.cpu())
    assert [row[5] for row in matches.rows] == [match.category for match in match_filters(initial)]
    assert p5_generalization.lab_cnn(ctx)[0] is model  # part 5 tests this model instead of training it again
    assert facts["recipe_whitening"]["edge"] == 24
    assert "24 2x2x3 filters are not learned but computed" in answers["And the recipe network's first layer?"]
    names = [Path(path).name for path, _ in section.figures]
    assert names == ["convolution_same.png", "learned_filters.png", "recipe_whitening_filters.png"]
    assert all((tmp_path / path).read_bytes().startswith(b"\x89PNG") for path, _ in section.figures)


def test_part1_without_cifar10_still_answers_and_comes_back_for_the_filters(tmp_path, monkeypatch):
    monkeypatch.setattr(p1_convolution, "load_ascent", lambda: np.random.default_rng(0).uniform(0, 255, (40, 40)))
    ctx = tiny_context(tmp_path, data_source=tmp_path / "no-cifar.tar.xz")
    (section,) = run_parts(ctx, [("convolution", p1_convolution.run)], live=False)
    assert section.missing.startswith("learned filters: the data could not be loaded")
    assert len(section.answers) == 6 and not (tmp_path / "parts" / "convolution.json").exists()


def test_part1_without_ascent_is_skipped_with_the_fix(tmp_path, monkeypatch):
    def offline():
        raise DataError("not in the cache")

    monkeypatch.setattr(p1_convolution, "load_ascent", offline)
    (section,) = run_parts(tiny_context(tmp_path), [("convolution", p1_convolution.run)], live=False)
    assert section.title == "Part 1: Convolutions"
    assert "ascent image is not in its cache" in section.skipped and "ascent.dat" in section.skipped


def test_part2_answer_12_follows_the_measurements(tmp_path, monkeypatch):
    measured = answers_of(p2_device.run(tiny_context(tmp_path)))["12"]
    assert "No GPU was measured" in measured or "the CPU's speed" in measured

    def with_gpu(**_options):
        return [
            Throughput(device, batch, batch / speed)
            for device, batch, speed in (
                ("cpu", 3, 3000),
                ("cpu", 1000, 4000),
                ("cuda", 3, 6000),
                ("cuda", 1000, 400_000),
            )
        ]

    monkeypatch.setattr(p2_device, "measure_conv_throughput", with_gpu)
    section = p2_device.run(tiny_context(tmp_path))
    assert answers_of(section)["12"].startswith("No: cuda runs 2.0x the CPU's speed for a batch of 3 and 100.0x")
    assert ["cuda", 1000, "400,000", "2.50"] in section.tables[1].rows


# --------------------------------------------------------------------------- parts 5 to 8 on synthetic data


def test_part5_answers_quote_its_measurements_and_change_with_the_data(tmp_path):
    sections = [
        p5_generalization.run(tiny_context(tmp_path / name, synthetic_data(seed, learnable)))
        for name, seed, learnable in (("banded", 1, True), ("noise", 2, False))
    ]
    for section in sections:
        facts, answers = section.facts, answers_of(section)
        rotated = facts["rotated"]
        assert f"scores {rotated['original']:.1%} on the test images and {rotated['rotated']:.1%}" in answers["24"]
        assert f"{abs(rotated['drop']):.1%} points" in answers["24"]
        for size, accuracy in facts["sizes"].items():
            assert f"{accuracy:.1%} at {size} x {size}" in answers["29"]
        assert "Flatten turns the last 8 x 8 x 32 feature map into 2,048 numbers" in answers["28"]
        assert "this model was built for 32x32" in answers["28"]  # the model's own refusal, quoted
        assert f"ends at {facts['augmented']['train_accuracy'][-1]:.1%}" in answers["26"]
        assert "(a copy of CIFAR-10 that is not the official archive: accuracy may differ)" in answers["24"]
        index, loss = facts["top_losses"][0]
        assert answers["Which test images cost the most loss, and which classes are confused?"].startswith(
            f"The highest loss, {loss:.2f}, is test image {index}: "
        )
        true, predicted, count = facts["most_confused_pairs"][0]
        assert (
            f"The most frequent mistake is {true} taken for {predicted} ({count} of the "
            in answers["Which test images cost the most loss, and which classes are confused?"]
        )
        shares = facts["gradcam_central_share"]
        assert (
            f"puts {shares['correct']:.0%} of its weight in the central quarter"
            in answers["Where does the model look when it is right, and when it is wrong?"]
        )
        assert section.tables[-1].title == "Most confused class pairs" and len(section.tables[-2].rows) == 12
    assert len(sections[0].figures) == 8
    assert all((tmp_path / "banded" / path).is_file() for path, _ in sections[0].figures)
    first, second = (answers_of(section) for section in sections)
    assert first["24"] != second["24"] and first["29"] != second["29"]
    assert first["27"] == second["27"]  # what augmentation could do does not depend on the data


def test_part4_traces_one_image_through_the_conv_blocks(tmp_path):
    ctx = tiny_context(tmp_path, synthetic_data(7, True, n_train=32, n_eval=16))
    model = build_cnn(n_conv_layers=3, n_filters=8, device="cpu")  # untrained: the shapes do not depend on it
    figure, table, sentence, shapes = p4_cnn.feature_maps_of_one_image(ctx, "X", model)
    assert shapes == [[32, 32, 3], [16, 16, 8], [8, 8, 16], [4, 4, 32]]
    assert "(32, 32, 3) -> (16, 16, 8) -> (8, 8, 16) -> (4, 4, 32)" in sentence
    assert "channels go 3 -> 8 -> 16 -> 32" in sentence and "width go 32 -> 16 -> 8 -> 4" in sentence
    assert [row[:2] for row in table.rows] == [
        ["max_pooling2d_1", "(16, 16, 8)"],
        ["max_pooling2d_2", "(8, 8, 16)"],
        ["max_pooling2d_3", "(4, 4, 32)"],
    ]
    assert (tmp_path / figure[0]).read_bytes().startswith(b"\x89PNG")


def test_part6_compares_batch_sizes_and_lists_the_lab_runs(tmp_path):
    ctx = tiny_context(tmp_path, synthetic_data(3, True, n_train=128, n_eval=32))
    ctx.carbon = True
    ctx.trained_model("E", {"n_conv_layers": 1, "n_dense_layers": 0}, 64, 1)  # a lab run tracked as it trains
    section = p6_carbon.run(ctx)
    sweep = {(row["batch_size"], row["epochs"]): row for row in section.facts["sweep"]}
    assert set(sweep) == {(64, 1), (64, 2), (256, 1), (256, 2)}
    ratio = sweep[64, 2]["energy_kwh"] / sweep[64, 1]["energy_kwh"]
    assert f"2 epochs took {ratio:.1f}x the energy of 1" in answers_of(section)["28"]
    assert "An epoch is 2 steps at batch 64 but 1 at batch 256" in answers_of(section)["29"]
    assert [row[0] for row in section.facts["runs"]] == ["E"]


def test_part7_counts_resnet50_without_weights_or_photos(tmp_path, monkeypatch):
    monkeypatch.delenv("CNNLAB_PHOTOS", raising=False)
    monkeypatch.delenv("CNNLAB_RESNET50_WEIGHTS", raising=False)
    (section,) = run_parts(tiny_context(tmp_path), [("resnet", p7_resnet.run)], live=False)
    answers = answers_of(section)
    assert answers["31"].startswith("53 Conv2D layers: 49 on the main path")
    assert "1 + 3 x 16 = 49) plus 4 1x1 projection shortcuts" in answers["31"]
    assert answers["32"].startswith("25,583,592 trainable, plus 53,120 non-trainable")
    assert "--photos DIR" in section.missing
    assert not (tmp_path / "parts" / "resnet.json").exists()  # done with the photos next time


@pytest.mark.slow
def test_part7_classifies_the_photos(tmp_path, photos_dir, session_cache):
    weights = require_path(Path(os.environ.get("CNNLAB_RESNET50_WEIGHTS", "<unset>")), "the ResNet50 weights")
    section = p7_resnet.run(tiny_context(tmp_path, photos=photos_dir, weights=weights))
    assert section.missing == ""
    assert section.facts["photos"]["chelsea.png"] in {"tabby", "tiger_cat", "Egyptian_cat"}
    shares = section.facts["gradcam_central_share"]
    assert set(shares) == set(section.facts["photos"]) and all(0 < share <= 1 for share in shares.values())
    assert (
        "Grad-CAM at blocks.conv5_block3 (a 7 x 7 map, upsampled)"
        in answers_of(section)["Where does ResNet50 look in the photos?"]
    )
    assert (tmp_path / "figures" / "resnet_gradcam.png").stat().st_size > 50_000
    assert (
        "the top class's probability ranges from"
        in answers_of(section)["Are the predictions correct, and how certain is the network?"]
    )


def test_part8_reports_the_trials_it_ran(tmp_path):
    section = p8_tuning.run(tiny_context(tmp_path, synthetic_data(4, True, n_train=96, n_eval=32)))
    best = section.facts["best"]
    assert section.facts["trials"] == len(section.tables[0].rows) == 2
    answer = answers_of(section)["What did the search find?"]
    assert f"Trial {best['trial']} was best with validation accuracy {best['val_accuracy']:.1%}" in answer
    assert f"scores {best['test_accuracy']:.1%} on the test images" in answer
    again = p8_tuning.run(tiny_context(tmp_path, synthetic_data(4, True, n_train=96, n_eval=32)))
    assert again.facts["best"] == best  # the study is kept: a rerun adds no trials


# --------------------------------------------------------------------------- the command


def test_cli_writes_both_reports_and_reuses_finished_parts(tmp_path, scipy_ascent, session_cache, capsys):
    out = tmp_path / "report"
    assert main(["lab", "--tiny", "--only", "convolution", "--out", str(out)]) == 0
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    assert main(["lab", "--tiny", "--only", "convolution", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "[1/1] convolution: done in an earlier run, reused" in captured.err
    assert f"Report: {out / 'report.html'} (Markdown: {out / 'report.md'})" in captured.out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--data", "/no/such/cifar.tar.xz"], "--data /no/such/cifar.tar.xz does not exist"),
        (["--photos", "/no/such/photos"], "--photos /no/such/photos does not exist"),
        (["--only", "convolutoin"], "unknown parts ['convolutoin']"),
    ],
)
def test_cli_refuses_bad_input_in_one_line(tmp_path, capsys, arguments, message):
    assert main(["lab", "--out", str(tmp_path), *arguments]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("cnnlab lab: error:") and message in error and "\n" not in error


@pytest.mark.slow
def test_real_data_parts_share_their_runs(tmp_path, cifar10_archive, session_cache):
    """Parts 3-5 on a few hundred real images: part 5 tests part 4's run E instead of training it again."""
    ctx = LabContext(out=tmp_path, tiny=True, data_source=cifar10_archive, device="cpu")
    parts = [(key, run) for key, run in discover_parts() if key in ("data", "cnn", "generalization")]
    data, cnn, generalization = run_parts(ctx, parts, live=False)
    run_e = cnn.facts["runs"]["E"]
    assert generalization.facts["rotated"]["original"] == pytest.approx(run_e["test_accuracy"])
    report = render_markdown([data, cnn, generalization], ReportInfo(ctx.mode, ctx.lab_data().source))
    assert "a lossy rebuild of CIFAR-10" in report
    carbon = json.loads((tmp_path / "runs" / "E" / "carbon.json").read_text())
    assert carbon["status"] == "complete" and carbon["total"]["energy_kwh"] > 0
