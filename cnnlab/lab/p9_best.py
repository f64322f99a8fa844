"""Part 9: The best configuration: from scratch against pretrained, with what each costs.

On CIFAR-10 two networks are trained on the lab's 7,500 images and measured side by side (accuracy,
wall time, energy and CO2eq): a data-efficient recipe from scratch and the ImageNet ResNet50 fine-tuned,
which answers the lab's question 35 from measurements. The lab's model B trained with the recipe's
schedule separates what the network brings from what the training brings. Budgets are shortened to fit
the lab's time; the full recipes are measured by ``benchmarks/recipe.py``.

On a folder of photos the recipe's network (designed for 32x32 images) is not trained: the pretrained
ResNet50 is, at the photos' own resolution, since ImageNet's features fit photos and few images.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from cnnlab.core.errors import DataError
from cnnlab.core.files import write_json
from cnnlab.data.cifar import accuracy_caveat
from cnnlab.evaluate.tta import evaluate_tta, member_accuracies
from cnnlab.experiments.fine_tune import BUDGETS, FineTuneBudget, train_pretrained
from cnnlab.experiments.recipes import RECIPES, Recipe, build_model, fit_recipe
from cnnlab.lab.context import LabContext, PartSkipped, read_history, run_finished
from cnnlab.lab.p7_resnet import IMAGENET_EPOCHS, IMAGENET_TRAIN_IMAGES
from cnnlab.lab.store import Section, Table
from cnnlab.models.registry import load_model
from cnnlab.plots import plot_results, save_figure

ESTIMATED_SECONDS = {"full": 440, "quick": 130, "tiny": 40}
LAB_TARGET = "52-58%"  # what the lab's students reached with their own configurations
SCRATCH = "fast5"  # the from-scratch recipe: 2 networks, 18 epochs, about 4.5 minutes on 2 CPU threads
SCRATCH_RUN = f"recipe_{SCRATCH}"  # its run folder; part 1 of a rerun shows its whitening filters
COST_FILE = "cost.json"  # wall time, energy and CO2eq of a measured training and testing, in its run folder
PHOTO_SIDE = 64  # data sets whose shorter side reaches this are photos: the pretrained network serves them


def _trained(ctx: LabContext, key: str, recipe: Recipe):
    """Train a recipe in OUT/runs/KEY (resumable); a run that finished in an earlier process is loaded."""
    data = ctx.lab_data()
    run = ctx.out / "runs" / key
    if run_finished(run, recipe.epochs):
        model = load_model(run, device=ctx.device)
    else:
        model = build_model(recipe, data.x_train, seed=0, device=ctx.device, class_names=data.class_names)
        fit_recipe(model, data, recipe, seed=0, callbacks=ctx.training_callbacks(), verbose=2, run_dir=run,
                   resume=True)  # fmt: skip
    return model, read_history(run)


def _lab_run_d(ctx: LabContext) -> float | None:
    """Test accuracy of part 4's run D (model B with the lab's training), when part 4 ran in this folder."""
    try:
        facts = json.loads((ctx.out / "parts" / "cnn.json").read_text())["section"]["facts"]
        return float(facts["runs"]["D"]["test_accuracy"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _bar_chart(bars: dict[str, float], path) -> None:
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(bars) + 1))
    names = list(bars)[::-1]
    ax.barh(names, [bars[name] for name in names], color="tab:blue")
    for i, name in enumerate(names):
        ax.text(bars[name] + 0.005, i, f"{bars[name]:.1%}", va="center")
    ax.axvspan(0.52, 0.58, color="tab:orange", alpha=0.2, label=f"the lab's students ({LAB_TARGET})")
    ax.set_xlim(0, 1)
    ax.set_xlabel("test accuracy (2,000 test images)")
    ax.legend(loc="lower right", bbox_to_anchor=(1, 1), frameon=False)  # above the axes: no bar hidden
    save_figure(fig, path)


def _ingredients(recipe: Recipe) -> list[list]:
    """The recipe's settings, read from the recipe itself, each with the reason it is there."""
    network = f"whitening + 3 conv groups {recipe.widths}"
    if recipe.members > 1:
        network = f"{recipe.members} networks, each " + network
    optimizer = f"SGD, Nesterov 0.9, weight decay {recipe.weight_decay}"
    if recipe.optimizer == "muon":
        optimizer = f"Muon for the conv filters (step {recipe.filter_lr}), {optimizer} for the rest"
    augmentation = f"random shift up to {recipe.translate} px (reflect) + horizontal flip"
    augmentation += f", a {recipe.cutout}x{recipe.cutout} square zeroed" if recipe.cutout else ""
    rows = [
        ["network", network, "pooling after the first conv of each group: most work at low resolution"
         + ("; members that err differently outvote each other's mistakes" if recipe.members > 1 else "")],
        ["first layer", "2x2 patch PCA whitening, frozen", "starts from decorrelated pixels"],
        ["optimizer", optimizer, "the usual for BatchNorm nets"],
        ["schedule", f"warm-up {recipe.warmup:.0%}, then linear decay to 0, peak {recipe.learning_rate}",
         "large steps early, fine ones late"],
        ["label smoothing", recipe.label_smoothing, "no over-confident logits on 7,500 images"],
        ["augmentation", augmentation, "new views of the same images every epoch"],
        ["weights", f"EMA, decay {recipe.ema_decay} per step, updated every {recipe.ema_every} steps",
         "averages out the last steps' noise"],
        ["test time", "mean logits over flips and 1-pixel shifts", "the views training taught it"],
    ]  # fmt: skip
    if recipe.cpu_bf16:
        rows.append(["precision", "bfloat16 autocast on CPUs with bf16 units (float32 elsewhere)",
                     "about 1.6x more steps per second on such a CPU, same accuracy"])  # fmt: skip
    return rows


def _budgets(ctx: LabContext) -> tuple[Recipe, Recipe, FineTuneBudget]:
    """The from-scratch recipe, the lab's model B with the recipe's training, and the fine-tuning budget,
    sized so that part 9 takes about 7 minutes on 2 CPU threads in a full run (estimates: fast5 267 s,
    ResNet50 at 64 px about 83 s per epoch of the whole network, much less for the head on frozen features)."""
    scratch = replace(RECIPES[SCRATCH], epochs=ctx.setting(RECIPES[SCRATCH].epochs, 3, tiny=1))
    lab = replace(RECIPES["lab"], epochs=ctx.setting(10, 3, tiny=1))
    head_only = FineTuneBudget(epochs=1, freeze_epochs=1)  # transfer learning: the head on frozen features
    pretrained = ctx.setting(BUDGETS["lab"], head_only, tiny=replace(head_only, image_size=32))
    return scratch, lab, pretrained


def budget_text(budget: FineTuneBudget) -> str:
    """How the report names a fine-tuning budget."""
    whole = budget.epochs - budget.freeze_epochs
    return (
        f"{budget.freeze_epochs} epoch(s) of the new head on frozen ImageNet features"
        + (f", then {whole} of the whole network from {budget.train_from} on" if whole else "")
        + f", at {budget.image_size} px (shorter side), batch {budget.batch_size}"
    )


def measured(ctx: LabContext, run: Path, work: Callable[[], Any]) -> tuple[Any, dict]:
    """Run ``work`` (training and testing) as one tracked span: its wall time, energy and CO2eq, stored in
    RUN/cost.json so that a rerun that reuses the run still reports them. Energy is None without tracking."""
    trackers = ctx.training_callbacks()
    for tracker in trackers:  # driven by hand: the span covers feature extraction and testing, not one fit
        tracker.params, tracker.run_dir = {"epochs": 1}, run
        tracker.on_train_begin()
        tracker.on_epoch_begin(0)
    started = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - started
    total = None
    for tracker in trackers:
        tracker.on_epoch_end(0)
        tracker.on_train_end()
        total = tracker.report.total
    cost = {"seconds": seconds, "energy_kwh": total and total["energy_kwh"], "co2eq_g": total and total["co2eq_g"],
            "method": trackers[0].report.method if trackers else None}  # fmt: skip
    write_json(run / COST_FILE, cost)
    return result, cost


def _scratch(ctx: LabContext, recipe: Recipe, data):
    """The recipe from scratch, trained and tested as one measured span (reused when finished earlier)."""
    run = ctx.out / "runs" / SCRATCH_RUN
    if run_finished(run, recipe.epochs) and (run / COST_FILE).is_file():
        return load_model(run, device=ctx.device), read_history(run), json.loads((run / COST_FILE).read_text())

    def train():
        model = build_model(recipe, data.x_train, seed=0, device=ctx.device, class_names=data.class_names)
        fit_recipe(model, data, recipe, seed=0, verbose=2, run_dir=run, resume=True)
        evaluate_tta(model, data.x_test, data.y_test, recipe.tta)  # testing is part of the cost, as for ResNet50
        return model

    model, cost = measured(ctx, run, train)
    return model, read_history(run), cost


def _pretrained(ctx: LabContext, data, budget: FineTuneBudget) -> tuple[dict | None, str]:
    """ResNet50 fine-tuned and tested (flip TTA) as one measured span; (None, why) without the weights."""
    run = ctx.path("runs", "pretrained_resnet50", COST_FILE).parent
    try:
        result, cost = measured(ctx, run, lambda: train_pretrained(data, budget, seed=0, device=ctx.device,
                                                                   weights=ctx.weights, verbose=2))  # fmt: skip
    except DataError as error:  # the weights are missing or damaged: the error says how to get them
        return None, f"the pretrained ResNet50: {error}"
    parameters = result["model"].count_params().total
    row = {"name": "ResNet50 fine-tuned from ImageNet", "test": result["test"]["accuracy"],
           "val": result["val"]["accuracy"], "parameters": parameters, "budget": budget_text(budget)}  # fmt: skip
    return {**row, **cost}, ""


def _energy_cells(cost: dict) -> list[str]:
    if cost.get("energy_kwh") is None:
        return [f"{cost['seconds']:.0f}", "not tracked", ""]
    return [f"{cost['seconds']:.0f}", f"{cost['energy_kwh']:.2e}", f"{cost['co2eq_g']:.3g}"]


def _cost_sentence(name: str, accuracy: float, cost: dict) -> str:
    energy = (
        "" if cost.get("energy_kwh") is None
        else f" ({cost['energy_kwh']:.2e} kWh, {cost['co2eq_g']:.3g} g CO2eq)"
    )  # fmt: skip
    return f"{name} reaches {accuracy:.1%} in {cost['seconds']:.0f} s{energy}"


def _ensemble_answer(members: list[float], together: float, recipe: Recipe) -> str:
    alone = ", ".join(f"{accuracy:.1%}" for accuracy in members)
    gain = together - sum(members) / len(members)
    return (
        f"Alone, the {len(members)} networks score {alone} on the test images (with TTA); their mean logits "
        f"score {together:.1%}, {gain:+.1%} against their average. Each trained {recipe.epochs} epochs from "
        "its own initial weights on the same batches; they overfit the training images in different ways, and "
        f"averaging cancels part of that. Training them costs as much as one network trained {len(members)} times "
        "as long."
    )


def _imagenet_sentence(ctx: LabContext) -> str:
    """What pre-training cost, from part 7's count of ResNet50's multiply-adds (when part 7 ran here)."""
    facts = ctx.earlier_facts("resnet") or {}
    if not facts.get("multiply_adds"):
        return (
            f"Its ImageNet training (about {IMAGENET_EPOCHS} epochs over {IMAGENET_TRAIN_IMAGES:,} images, see part 7) "
            "was paid once by its authors and is shared by everyone who downloads the weights."
        )
    training_ops = IMAGENET_TRAIN_IMAGES * IMAGENET_EPOCHS * 3 * facts["multiply_adds"]
    return (
        f"Its ImageNet training cost about {training_ops:.1e} multiply-adds ({IMAGENET_EPOCHS} epochs x "
        f"{IMAGENET_TRAIN_IMAGES:,} images x 3, counted in part 7), paid once by its authors and shared by everyone "
        "who downloads the weights: per user it is close to nothing, but it is not zero."
    )


def carbon_answer(ctx: LabContext, scratch: dict | None, pretrained: dict | None, caveat: str) -> tuple[str, str]:
    """Question 35 from the two measured spans: accuracy, wall time and energy side by side."""
    question = "35. What is the carbon footprint of using a pre-trained network compared to training one from scratch?"
    if pretrained is None or scratch is None:
        measured_one = pretrained or scratch
        said = "" if measured_one is None else _cost_sentence(measured_one["name"], measured_one["test"],
                                                              measured_one) + f"{caveat}. "  # fmt: skip
        return question, (said + "Only one side was trained here, so the two footprints are not compared "
                          "(see this part's note on what is missing). " + _imagenet_sentence(ctx))  # fmt: skip
    tracked = scratch.get("energy_kwh") is not None and pretrained.get("energy_kwh") is not None
    what = "energy" if tracked else "wall time"
    ratio = (pretrained["energy_kwh"] / scratch["energy_kwh"] if tracked
             else pretrained["seconds"] / scratch["seconds"])  # fmt: skip
    gain = pretrained["test"] - scratch["test"]
    verdict = (
        f"Here using the pretrained network cost {ratio:.2f}x the {what} of training from scratch"
        + (", less" if ratio < 1 else ", more")
        + f", for {gain:+.1%} points of test accuracy."
    )
    return question, (
        f"Measured on the same {ctx.lab_data().x_train.shape[0]:,} training images, training and testing included"
        f"{caveat}: {_cost_sentence(scratch['name'], scratch['test'], scratch)}; "
        f"{_cost_sentence(pretrained['name'], pretrained['test'], pretrained)}. {verdict} "
        f"Fine-tuning reuses features learned from {IMAGENET_TRAIN_IMAGES:,} photos, so it needs few epochs; but "
        f"each of its steps runs a network of {pretrained['parameters']:,} parameters (the recipe's: "
        f"{scratch['parameters']:,}) at a larger image size, so it is not free. "
        + _imagenet_sentence(ctx)
        + ("" if tracked else " Energy was not tracked in this run (--no-carbon): wall time stands in for it.")
    )


def run(ctx: LabContext) -> Section:
    data = ctx.lab_data()
    native = ctx.lab_data(native=True)
    if not ctx.is_cifar10() and min(native.input_shape[:2]) >= PHOTO_SIDE:
        return _pretrained_on_photos(ctx, native)
    return _scratch_and_pretrained(ctx, data)


def _comparison_table(rows: list[dict], caveat: str) -> Table:
    return Table(
        f"From scratch against pretrained: training and testing, measured{caveat}",
        ["network", "budget trained here", "parameters", "test acc (TTA)", "val acc", "wall s", "energy kWh",
         "g CO2eq"],
        [[row["name"], row["budget"], f"{row['parameters']:,}", f"{row['test']:.3f}", f"{row['val']:.3f}",
          *_energy_cells(row)] for row in rows],
    )  # fmt: skip


def _pretrained_on_photos(ctx: LabContext, data) -> Section:
    """A folder of photos: ResNet50 fine-tuned at the photos' resolution, not the 32x32 recipe."""
    caveat = accuracy_caveat(data.source)
    _scratch_recipe, _lab, budget = _budgets(ctx)
    pretrained, missing = _pretrained(ctx, data, budget)
    if pretrained is None:
        raise PartSkipped(missing, "pass --weights FILE or set $CNNLAB_RESNET50_WEIGHTS")
    height, width = data.input_shape[:2]
    why = (
        f"The images of {ctx.data_name()} are {height}x{width} photos, so this part fine-tunes the ImageNet "
        f"ResNet50 ({budget_text(budget)}) instead of training the recipe's network from scratch: that network "
        "was designed for 32x32 images, at this size each of its steps would cost about "
        f"{height * width / 32**2:.0f}x a CIFAR step, and features learned from {IMAGENET_TRAIN_IMAGES:,} ImageNet "
        f"photos need far fewer than the {len(data.x_train):,} training images here."
    )
    answers = [
        ("Which network does this part train, and why?", why),
        ("How high a test accuracy does it reach?",
         _cost_sentence(pretrained["name"], pretrained["test"], pretrained) + f" on the {len(data.x_test):,} test "
         f"images with flip TTA{caveat} ({pretrained['val']:.1%} on the validation images)."),
        carbon_answer(ctx, None, pretrained, caveat),
    ]  # fmt: skip
    return Section(
        key="best",
        title="Part 9: The best configuration",
        intro=why,
        tables=[_comparison_table([pretrained], caveat)],
        answers=answers,
        facts={"chosen": "pretrained", "pretrained": pretrained, "scratch": None},
    )


def _scratch_and_pretrained(ctx: LabContext, data) -> Section:
    """CIFAR-sized images: the recipe from scratch and ResNet50 fine-tuned, measured side by side."""
    caveat = accuracy_caveat(data.source)
    recipe, lab, budget = _budgets(ctx)
    model, history, cost = _scratch(ctx, recipe, data)
    tta = {level: evaluate_tta(model, data.x_test, data.y_test, level)["accuracy"] for level in (0, 1, 2)}
    val = evaluate_tta(model, data.x_val, data.y_val, recipe.tta)["accuracy"]
    members = member_accuracies(model, data.x_test, data.y_test, recipe.tta)
    plot_results(history, ctx.path("figures", "recipe_scratch.png"), title=f"recipe '{SCRATCH}': {tta[2]:.1%}")
    scratch = {"name": f"recipe '{SCRATCH}' from scratch", "test": tta[recipe.tta], "val": val,
               "parameters": model.count_params().total, **cost,
               "budget": f"{recipe.epochs} epochs, {recipe.members} network(s)"}  # fmt: skip
    pretrained, missing = _pretrained(ctx, data, budget)
    lab_model, _ = _trained(ctx, "recipe_lab_model_b", lab)
    lab_plain = evaluate_tta(lab_model, data.x_test, data.y_test, 0)["accuracy"]
    lab_tta = evaluate_tta(lab_model, data.x_test, data.y_test, lab.tta)["accuracy"]
    run_d = _lab_run_d(ctx)

    bars = {"model B, lab training (part 4, run D)": run_d} if run_d is not None else {}
    bars |= {"model B, recipe training": lab_tta, f"recipe '{SCRATCH}', no TTA": tta[0],
             f"recipe '{SCRATCH}', flips + shifts TTA": tta[2]}  # fmt: skip
    if pretrained is not None:
        bars["ResNet50 fine-tuned, flip TTA"] = pretrained["test"]
    _bar_chart(bars, ctx.path("figures", "recipe_accuracy.png"))
    lab_d = f"{run_d:.1%} with the lab's training (part 4, run D)" if run_d is not None else (
        f"{LAB_TARGET} with the lab's training (part 4 did not run in this report folder)")  # fmt: skip
    best = max([scratch] + ([pretrained] if pretrained else []), key=lambda row: row["test"])
    answers = [
        ("How high a test accuracy can a better configuration reach on the lab's data?",
         f"{_cost_sentence(best['name'], best['test'], best)} on the test images{caveat}, against the lab's "
         f"{LAB_TARGET}. The recipe from scratch gets {tta[2]:.1%} ({val:.1%} on the validation images) after "
         f"{recipe.epochs} epochs, with {scratch['parameters']:,} parameters."),
        ("How much of that is the training alone?",
         f"The lab's model B, unchanged, gets {lab_tta:.1%} with the recipe's schedule, augmentation and label "
         f"smoothing over {lab.epochs} epochs, against {lab_d}. Augmentation shows it new variants of its images "
         "every epoch, so it can train longer without memorising them."),
        ("What does test-time augmentation add?",
         f"Averaging the logits of each test image and its mirror image gives {tta[1]:.1%} instead of "
         f"{tta[0]:.1%}; adding 1-pixel shifts gives {tta[2]:.1%}. It costs six forward passes per image and "
         "network, nothing in training."),
    ]  # fmt: skip
    if len(members) > 1:
        answers.append(("What do several networks add?", _ensemble_answer(members, tta[2], recipe)))
    answers.append(carbon_answer(ctx, scratch, pretrained, caveat))
    rows = [scratch] + ([pretrained] if pretrained else [])
    results = Table(
        f"Test accuracy of the lab's model B on the {len(data.y_test):,} test images{caveat}",
        ["model", "training", "epochs", "test acc, no TTA", "test acc, TTA"],
        ([["model B", "the lab's (part 4, run D)", 20, f"{run_d:.3f}", ""]] if run_d is not None else [])
        + [["model B", "recipe 'lab'", lab.epochs, f"{lab_plain:.3f}", f"{lab_tta:.3f}"]],
    )  # fmt: skip
    return Section(
        key="best",
        title="Part 9: The best configuration",
        intro=_intro(data, recipe, lab, budget),
        figures=[("figures/recipe_accuracy.png", "Test accuracy: the lab's model, the recipe and ResNet50"),
                 ("figures/recipe_scratch.png", "Training curves of the recipe (augmented training images)")],
        tables=[_comparison_table(rows, caveat), results,
                Table(f"What the recipe '{SCRATCH}' does", ["ingredient", "setting", "why"], _ingredients(recipe))],
        answers=answers,
        facts={"chosen": "both", "scratch": scratch, "pretrained": pretrained, "recipe_test_accuracy_tta": tta,
               "lab_model_b_recipe": lab_tta, "lab_model_b_recipe_no_tta": lab_plain,
               "lab_model_b_lab_training": run_d, "recipe_member_accuracies": members,
               "epochs": {SCRATCH: recipe.epochs, "lab": lab.epochs, "pretrained": budget.epochs}},
        missing=missing and f"{missing} (the comparison of question 35 waits for it)",
    )  # fmt: skip


def _intro(data, recipe: Recipe, lab: Recipe, budget: FineTuneBudget) -> str:
    """Which budgets this run trained, and where the full ones are measured."""
    return (
        f"Two ways past the lab's {LAB_TARGET}, trained on the same {len(data.y_train):,} images (validation "
        f"{len(data.y_val):,}, test {len(data.y_test):,}) and measured side by side with their energy: the "
        f"recipe '{SCRATCH}' from scratch (an airbench-style network, one-cycle schedule, augmentation, label "
        f"smoothing, weight averaging and test-time augmentation) for {recipe.epochs} of its {RECIPES[SCRATCH].epochs}"
        f" epochs, and the ImageNet ResNet50 fine-tuned: {budget_text(budget)}. The lab's model B trains "
        f"{lab.epochs} epochs of the recipe's schedule (the recipe 'lab' has {RECIPES['lab'].epochs}). These "
        "budgets fit the lab's time; the full recipes (`fast`, `fast5`, `lab`, `resnet50`) are measured by "
        "`python benchmarks/recipe.py`, and `cnnlab train --recipe fast` trains the best of them on its own."
    )
