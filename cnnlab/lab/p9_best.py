"""Part 9: The best configuration: a data-efficient recipe on the lab's 7,500 images.

Two measurements separate what the network brings from what the training brings: the recipe's own
network with its schedule, and the lab's model B (same architecture as part 4's run D) trained with
the recipe's schedule, augmentation and label smoothing.
"""

from __future__ import annotations

import json
from dataclasses import replace

import matplotlib.pyplot as plt

from cnnlab.data.cifar import accuracy_caveat
from cnnlab.evaluate.tta import evaluate_tta, member_accuracies
from cnnlab.experiments.recipes import RECIPES, Recipe, build_model, fit_recipe
from cnnlab.lab.context import LabContext, read_history, run_finished
from cnnlab.lab.store import Section, Table
from cnnlab.models.registry import load_model
from cnnlab.plots import plot_results, save_figure

ESTIMATED_SECONDS = {"full": 660, "quick": 130, "tiny": 20}
LAB_TARGET = "52-58%"  # what the lab's students reached with their own configurations


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
    ax.legend(loc="lower right")
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


def _ensemble_answer(members: list[float], together: float, recipe: Recipe) -> str:
    alone = ", ".join(f"{accuracy:.1%}" for accuracy in members)
    gain = together - sum(members) / len(members)
    return (
        f"Alone, the {len(members)} networks score {alone} on the test images (with TTA); their mean logits "
        f"score {together:.1%}, {gain:+.1%} against their average. Each trained {recipe.epochs} epochs from "
        "its own initial weights on the same batches; they overfit the 7,500 images in different ways, and "
        f"averaging cancels part of that. Training them costs as much as one network trained {len(members)} times "
        "as long."
    )


def run(ctx: LabContext) -> Section:
    data = ctx.lab_data()
    caveat = accuracy_caveat(data.source)
    fast = replace(RECIPES["fast"], epochs=ctx.setting(RECIPES["fast"].epochs, 3, tiny=1))
    lab = replace(RECIPES["lab"], epochs=ctx.setting(RECIPES["lab"].epochs, 4, tiny=1))

    model, history = _trained(ctx, "recipe_fast", fast)
    tta = {level: evaluate_tta(model, data.x_test, data.y_test, level)["accuracy"] for level in (0, 1, 2)}
    val = evaluate_tta(model, data.x_val, data.y_val, fast.tta)["accuracy"]
    members = member_accuracies(model, data.x_test, data.y_test, fast.tta)
    plot_results(history, ctx.path("figures", "recipe_fast.png"), title=f"recipe 'fast': test accuracy {tta[2]:.1%}")
    lab_model, _ = _trained(ctx, "recipe_lab_model_b", lab)
    lab_plain = evaluate_tta(lab_model, data.x_test, data.y_test, 0)["accuracy"]
    lab_tta = evaluate_tta(lab_model, data.x_test, data.y_test, lab.tta)["accuracy"]
    run_d = _lab_run_d(ctx)

    bars = {"model B, lab training (part 4, run D)": run_d} if run_d is not None else {}
    bars |= {"model B, recipe training": lab_tta, "recipe network, no TTA": tta[0],
             "recipe network, flips + shifts TTA": tta[2]}  # fmt: skip
    _bar_chart(bars, ctx.path("figures", "recipe_accuracy.png"))
    params, lab_params = model.count_params().trainable, lab_model.count_params().trainable
    results = Table(
        f"Test accuracy on the {len(data.y_test):,} test images{caveat}",
        ["model", "training", "trainable parameters", "epochs", "test acc, no TTA", "test acc, TTA"],
        ([["model B", "the lab's (part 4, run D)", "", 20, f"{run_d:.3f}", ""]] if run_d is not None else [])
        + [["model B", "recipe 'lab'", f"{lab_params:,}", lab.epochs, f"{lab_plain:.3f}",
            f"{lab_tta:.3f}"],
           ["recipe network", "recipe 'fast'", f"{params:,}", fast.epochs, f"{tta[0]:.3f}", f"{tta[2]:.3f}"]],
    )  # fmt: skip
    ingredients = Table("What the recipe 'fast' does", ["ingredient", "setting", "why"], _ingredients(fast))
    lab_d = (
        f"{run_d:.1%} with the lab's training (part 4, run D)"
        if run_d is not None
        else ("52-58% with the lab's training (part 4 did not run in this report folder)")
    )
    answers = [
        ("How high a test accuracy can a better configuration reach on the lab's data?",
         f"The recipe's network reaches {tta[2]:.1%} on the test images{caveat} ({val:.1%} on the validation "
         f"images) after {fast.epochs} epochs, against the lab's {LAB_TARGET}. It has {params:,} trainable "
         f"parameters (model B: {lab_params:,})."),
        ("How much of that is the training alone?",
         f"The lab's model B, unchanged, gets {lab_tta:.1%} with the recipe's schedule, augmentation and label "
         f"smoothing, against {lab_d}. Augmentation shows it new variants of its 7,500 images every epoch, so it "
         "can train longer without memorising them."),
        ("What does test-time augmentation add?",
         f"Averaging the logits of each test image and its mirror image gives {tta[1]:.1%} instead of "
         f"{tta[0]:.1%}; adding 1-pixel shifts gives {tta[2]:.1%}. It costs six forward passes per image and "
         "network, nothing in training."),
    ]  # fmt: skip
    if len(members) > 1:
        answers.append(("What do several networks add?", _ensemble_answer(members, tta[2], fast)))
    return Section(
        key="best",
        title="Part 9: The best configuration",
        intro=f"A recipe designed for this protocol (train on {len(data.y_train):,} images, validate on "
        f"{len(data.y_val):,}, test on {len(data.y_test):,}) and sized for a few CPU minutes: an airbench-style "
        "network, a one-cycle schedule, augmentation, label smoothing, an average of the weights and test-time "
        "augmentation. `cnnlab train --recipe fast` trains it on its own.",
        figures=[("figures/recipe_accuracy.png", "Test accuracy: the lab's model against the recipe"),
                 ("figures/recipe_fast.png", "Training curves of the recipe (augmented training images)")],
        tables=[results, ingredients],
        answers=answers,
        facts={"recipe_test_accuracy_tta": tta, "recipe_val_accuracy": val, "lab_model_b_recipe": lab_tta,
               "lab_model_b_recipe_no_tta": lab_plain, "lab_model_b_lab_training": run_d, "recipe_params": params,
               "epochs": {"fast": fast.epochs, "lab": lab.epochs}, "recipe_member_accuracies": members},
    )  # fmt: skip
