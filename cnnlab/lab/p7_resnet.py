"""Part 7: Pre-trained 2D CNNs.

Keras' ImageNet ResNet50, rebuilt in PyTorch: its layers and parameters counted from the network, and
the user's photos classified with the published weights. The structure questions need no weights, so
they are answered even when the weights or the photos are missing; the classification then waits for them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnlab.core.errors import DataError
from cnnlab.evaluate import explain
from cnnlab.evaluate.imagenet import classify_photos, plot_predictions
from cnnlab.lab.context import LabContext, PartSkipped
from cnnlab.lab.store import Section, Table
from cnnlab.models.resnet50 import INPUT_SIZE, STAGES, ResNet50, count_conv_layers
from cnnlab.models.resnet50_weights import load_resnet50, resolve_weights_path
from cnnlab.train.summary import count_params

ESTIMATED_SECONDS = {"full": 10, "quick": 10, "tiny": 30}
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# How ResNet50 was trained (He et al. 2015, as Keras' weights were): ImageNet's 1.28 million training
# images, about 90 epochs; a backward pass costs about twice a forward pass.
IMAGENET_TRAIN_IMAGES = 1_281_167
IMAGENET_EPOCHS = 90


def _multiply_adds(model: nn.Module, size: int) -> int:
    """Multiply-adds of one forward pass of one size x size image, counted from the conv and dense layers."""
    total = 0

    def count(module, _inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += output.numel() * kernel
        else:
            total += module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    return total


def _photos(ctx: LabContext) -> list[Path]:
    folder = ctx.photos_dir()
    photos = sorted(path for path in folder.iterdir() if path.suffix.lower() in PHOTO_SUFFIXES)
    if not photos:
        raise PartSkipped(
            f"the photos folder {folder} holds no images ({', '.join(sorted(PHOTO_SUFFIXES))})",
            "put some JPEG or PNG photos in it",
        )
    return photos


def _classify(ctx: LabContext) -> tuple[dict, list[str]]:
    """Load the weights and classify the photos; a missing or unreadable input becomes a note instead."""
    from cnnlab.core.runtime import pick_device

    try:
        photos = _photos(ctx)
        weights = resolve_weights_path(ctx.weights)
        model = load_resnet50(weights, progress=False).to(pick_device(ctx.device))
    except PartSkipped as skip:
        return {}, [str(skip)]
    except DataError as error:
        return {}, [str(error)]
    started = time.perf_counter()
    results, failures = classify_photos(model, photos)
    seconds = time.perf_counter() - started
    classified = {"model": model, "results": results, "failures": failures, "seconds": seconds, "weights": weights.name}
    if results:
        plot_predictions(results, ctx.path("figures", "resnet_photos.png"))
        classified["gradcam"] = photo_grad_cams(ctx, model, results)
    return classified, []


def photo_grad_cams(ctx: LabContext, model: ResNet50, results) -> dict:
    """Grad-CAM of each photo's top class at ResNet50's last block, as one figure; its timing and how
    much of each map lies in the photo's central quarter."""
    started = time.perf_counter()
    cams = explain.grad_cam(model, np.stack([result.image for result in results]))
    explain.overlay_figure(
        cams, ctx.path("figures", "resnet_gradcam.png"), titles=[result.path.name for result in results]
    )
    shares = {result.path.name: explain.central_share(cams.maps[i : i + 1]) for i, result in enumerate(results)}
    seconds = time.perf_counter() - started
    return {"layer": cams.layer, "map_shape": cams.raw.shape[1:], "seconds": seconds, "central_share": shares}


def run(ctx: LabContext) -> Section:
    classified, missing = _classify(ctx)
    model = classified.get("model") or ResNet50()  # the counts do not depend on the weights
    convs = count_conv_layers(model)
    counts = count_params(model)
    blocks = sum(count for _, _, count, _ in STAGES)
    macs = _multiply_adds(model, INPUT_SIZE)
    training_ops = IMAGENET_TRAIN_IMAGES * IMAGENET_EPOCHS * 3 * macs

    results = classified.get("results", [])
    tables = [
        Table(
            "ResNet50 in numbers",
            ["what", "count"],
            [
                ["Conv2D layers on the main path", convs.main_path],
                ["Conv2D projection shortcuts (1x1)", convs.projection_shortcuts],
                ["Conv2D layers in all", convs.total],
                ["trainable parameters", f"{counts.trainable:,}"],
                ["non-trainable (BatchNorm moving mean and variance)", f"{counts.non_trainable:,}"],
                ["parameters in all", f"{counts.total:,}"],
                [f"multiply-adds per {INPUT_SIZE} x {INPUT_SIZE} image", f"{macs:,}"],
            ],
        )
    ]
    photo_tables, figures = _photo_tables_and_figures(classified, results)
    tables += photo_tables

    answers = [
        *_structure_answers(convs, counts, blocks),
        (
            "What did training ResNet50 cost, against using it? (Part 9 measures question 35 on this machine.)",
            _carbon_answer(classified, macs, training_ops),
        ),
    ]
    if results:
        answers.append(("Are the predictions correct, and how certain is the network?", _certainty_answer(results)))
        answers.append(("Where does ResNet50 look in the photos?", _grad_cam_answer(classified["gradcam"])))
    return Section(
        key="resnet",
        title="Part 7: Pre-trained 2D CNNs",
        intro="Keras' ResNet50 with its ImageNet weights, rebuilt layer for layer in PyTorch"
        + (f" (weights: {classified['weights']})" if classified else "")
        + ". Its structure is counted from the network itself.",
        figures=figures,
        tables=tables,
        answers=answers,
        facts={
            "conv_layers": convs.total,
            "main_path_convs": convs.main_path,
            "trainable": counts.trainable,
            "non_trainable": counts.non_trainable,
            "multiply_adds": macs,
            "photos": {r.path.name: r.top[0][1] for r in results},
            "gradcam_central_share": classified.get("gradcam", {}).get("central_share", {}),
        },
        missing="; ".join(missing),
    )


def _structure_answers(convs, counts, blocks: int) -> list[tuple[str, str]]:
    """Questions 31-34, from the counts of the network itself."""
    hessian_entries = counts.trainable**2
    return [
        (
            "31. How many convolutional layers does ResNet50 have?",
            f"{convs.total} Conv2D layers: {convs.main_path} on the main path (the 7x7 stem conv, then {blocks} "
            f"bottleneck blocks of three convs, 1x1 -> 3x3 -> 1x1: 1 + 3 x {blocks} = {1 + 3 * blocks}) plus "
            f"{convs.projection_shortcuts} 1x1 projection shortcuts, one in the first block of each of the "
            f"{len(STAGES)} stages, where the shortcut must change the number of channels (and the size). The 50 "
            f"in the name counts the weight layers along the main path: {convs.main_path} convs + 1 dense layer.",
        ),
        (
            "32. How many trainable parameters does ResNet50 have?",
            f"{counts.trainable:,} trainable, plus {counts.non_trainable:,} non-trainable (the moving mean and "
            f"variance of its BatchNorm layers): {counts.total:,} in all, {counts.total * 4 / 2**20:.1f} MB as "
            "float32.",
        ),
        (
            "33. What image size does ResNet50 expect?",
            f"{INPUT_SIZE} x {INPUT_SIZE} x 3 (RGB, which Keras' preprocessing turns into BGR minus the ImageNet "
            "mean). The convolutions and the global average pooling would run on other sizes, but the weights were "
            f"trained at {INPUT_SIZE}, and Keras' model with its classifier insists on it.",
        ),
        (
            "34. Using the number of parameters: why is the second derivative seldom used to train deep networks?",
            f"The second derivative of the loss is the Hessian, one entry per pair of parameters: "
            f"{counts.trainable:,}^2 = {hessian_entries:.2e} numbers, {hessian_entries * 4 / 1e15:,.1f} petabytes "
            "as float32, to be recomputed at every step and inverted for a Newton step (about n^3 = "
            f"{float(counts.trainable) ** 3:.1e} operations). A gradient has just n entries and costs about two "
            "forward passes (back-propagation), so first-order methods (SGD, Adam) win; quasi-Newton and "
            "Hessian-vector methods exist but are rarely worth it.",
        ),
    ]


def _photo_tables_and_figures(classified: dict, results) -> tuple[list[Table], list[tuple[str, str]]]:
    """The top-5 table of the photos and their two figures; nothing when no photo was classified."""
    if not results:
        return [], []
    rows = [
        [
            r.path.name,
            _name(r.top[0][1]),
            f"{r.top[0][2]:.3f}",
            ", ".join(f"{_name(name)} {p:.2f}" for _, name, p in r.top[1:]),
        ]
        for r in results
    ]
    rows += [[path.name, "not classified", "", reason] for path, reason in classified["failures"]]
    tables = [Table("Top-5 classes of each photo", ["photo", "top class", "probability", "next four"], rows)]
    figures = [
        ("figures/resnet_photos.png", "Each photo as the network saw it, with its five most likely ImageNet classes"),
        (
            "figures/resnet_gradcam.png",
            f"Grad-CAM at {classified['gradcam']['layer']}: where in each photo the top class's score comes from",
        ),
    ]
    return tables, figures


def _certainty_answer(results) -> str:
    certainties = sorted(r.top[0][2] for r in results)
    return (
        f"{len(results)} photos; the top class's probability ranges from {certainties[0]:.0%} to "
        f"{certainties[-1]:.0%} (median {certainties[len(certainties) // 2]:.0%}). Whether each is right is for a "
        "person to judge from the figure: the table lists every photo's top five classes. ImageNet's 1000 classes "
        "split objects far more finely than CIFAR-10's 10 (over a hundred dog breeds, for one), so a right "
        "answer's probability is often shared with its close neighbours."
    )


def _grad_cam_answer(grad_cam: dict) -> str:
    shares = grad_cam["central_share"]
    size = " x ".join(map(str, grad_cam["map_shape"]))
    ordered = sorted(shares, key=shares.get)
    return (
        f"Grad-CAM at {grad_cam['layer']} (a {size} map, upsampled) took {grad_cam['seconds']:.1f} s for "
        f"the {len(shares)} photos. On average {np.mean(list(shares.values())):.0%} of a map's weight lies in the "
        f"central quarter of the photo (the middle half of each side; 25% if spread evenly): most in "
        f"{ordered[-1]} ({shares[ordered[-1]]:.0%}), least in {ordered[0]} ({shares[ordered[0]]:.0%}). The figure "
        "shows whether that weight sits on the object the top class names."
    )


def _name(imagenet_class: str) -> str:
    return imagenet_class.replace("_", " ")


def _carbon_answer(classified: dict, macs: int, training_ops: int) -> str:
    equivalent_images = training_ops / macs
    here = ""
    if classified.get("results"):
        per_image = classified["seconds"] / len(classified["results"])
        years = per_image * equivalent_images / (365 * 24 * 3600)
        here = (
            f" Here a photo took {per_image:.2f} s, so that training would keep this machine busy for about "
            f"{years:,.0f} year{'' if round(years) == 1 else 's'}."
        )
    return (
        f"Much lower. Using it costs one forward pass per image, {macs / 1e9:.1f} billion multiply-adds. Training "
        f"it as its authors did costs about {IMAGENET_EPOCHS} epochs x {IMAGENET_TRAIN_IMAGES:,} ImageNet images "
        f"x 3 (forward and backward) = {training_ops:.1e} multiply-adds, as much as classifying "
        f"{equivalent_images:.1e} images.{here} That cost was paid once and is shared by everyone who downloads "
        "the weights; fine-tuning only the last layers on one's own data adds little to it."
    )
