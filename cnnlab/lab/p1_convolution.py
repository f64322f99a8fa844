"""Part 1: Convolutions.

Classical filters on scipy's ascent image and the output shape of each mode. Every answer is computed
from the image and kernels of this run: the shapes are those of the responses scipy returned, and the
filters' effects are measured on the image and on a test edge. The lab says a CNN learns such filters
instead of having them designed: the first-layer filters of part 4's run E (trained here once and
reused by parts 4 and 5) are matched to the classical kernels, and compared with the same network untrained.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnlab.convolution import (
    MODES,
    SOBEL_X,
    SOBEL_Y,
    convolve,
    gaussian_kernel,
    load_ascent,
    output_shape,
    plot_responses,
)
from cnnlab.core.errors import ConfigError, DataError
from cnnlab.evaluate import filters
from cnnlab.lab.context import LabContext, PartSkipped
from cnnlab.lab.p4_cnn import LAB_RUNS
from cnnlab.lab.p5_generalization import BEST_RUN, lab_cnn
from cnnlab.lab.p9_best import SCRATCH_RUN
from cnnlab.lab.store import Section, Table

# The full and quick runs include training part 4's run E, which parts 4 and 5 then reuse.
ESTIMATED_SECONDS = {"full": 90, "quick": 25, "tiny": 10}
CIFAR_SIDE = 32
LAB_CONV_BLOCKS = 4  # the deepest model of part 4: four conv (3x3) + max-pool (2x2) blocks
RECIPE_RUN = SCRATCH_RUN  # part 9's run of the recipe network, whose first layer is frozen whitening


def _ascent() -> np.ndarray:
    try:
        return load_ascent()
    except DataError:
        import pooch

        cached = Path(pooch.os_cache("scipy-data")) / "ascent.dat"
        raise PartSkipped(
            "scipy's ascent image is not in its cache and could not be downloaded",
            f"run once with network access, or copy ascent.dat to {cached}",
        ) from None


def _shape(shape: tuple[int, ...]) -> str:
    return " x ".join(str(size) for size in shape)


def _mean_neighbour_difference(image: np.ndarray) -> float:
    """How much adjacent pixels differ on average: high for sharp images, lower once blurred."""
    return float(np.abs(np.diff(image, axis=1)).mean())


def _edge_test() -> dict[str, float]:
    """Largest response of each Sobel filter to an image with one vertical edge (dark left, bright right)."""
    step = np.zeros((9, 9))
    step[:, 5:] = 1.0
    return {
        name: float(np.abs(convolve(step, kernel, "valid")).max())
        for name, kernel in (("Sobel X", SOBEL_X), ("Sobel Y", SOBEL_Y))
    }


def _sizes_through_blocks(side: int, mode: str, blocks: int) -> list[str]:
    """Feature-map side after each conv 3x3 (in ``mode``) + 2x2 max-pool block, until nothing is left."""
    sizes = [str(side)]
    for _ in range(blocks):
        try:
            side = output_shape((side, side), (3, 3), mode)[0] // 2
        except ConfigError:
            sizes.append("none (kernel larger than the map)")
            break
        sizes.append(str(side) if side else "0 (nothing left)")
        if not side:
            break
    return sizes


def _border_use(side: int = 6) -> np.ndarray:
    """How many valid-mode 3x3 outputs each input pixel of a side x side image feeds (corners 1, centre 9)."""
    return convolve(np.ones((side - 2, side - 2)), np.ones((3, 3)), "full")


def _untrained_twin(model):
    """Run E's network as built before training: the same build_cnn settings and seed, no fit."""
    from cnnlab.models.cnn import build_cnn

    return build_cnn(
        input_shape=model.input_shape, class_names=model.class_names, device="cpu", **LAB_RUNS[BEST_RUN][1]
    )


def _count_text(counts: dict[str, int]) -> str:
    return (
        f"{counts['edge']} are closest to an edge detector (Sobel or Laplacian), {counts['blur']} to a blur "
        f"(Gaussian or box), {counts['colour']} respond to colour and {counts['other']} match nothing well"
    )


def _recipe_whitening(ctx: LabContext) -> Section:
    """Part 9's frozen whitening filters, when its recipe run is in this output folder (else nothing)."""
    weights_file = ctx.out / "runs" / RECIPE_RUN / "weights.safetensors"
    try:
        from safetensors import safe_open

        with safe_open(str(weights_file), "pt") as handle:  # an ensemble's members share the same filters
            key = next(k for k in sorted(handle.keys()) if k.endswith("whiten.weight"))
            weights = handle.get_tensor(key)
    except (OSError, StopIteration, ValueError, RuntimeError):  # not trained here (yet), or another network
        return Section(key="convolution", title="")
    filters.filter_grid(weights, ctx.path("figures", "recipe_whitening_filters.png"))
    counts = filters.summarize_filters(filters.match_filters(weights))
    count, channels, height, width = weights.shape
    return Section(
        key="convolution",
        title="",
        figures=[
            (
                "figures/recipe_whitening_filters.png",
                f"Part 9's recipe network: its first layer, {count} frozen {height}x{width} whitening filters "
                "computed from the training images (not learned)",
            )
        ],
        answers=[
            (
                "And the recipe network's first layer?",
                f"Its {count} {height}x{width}x{channels} filters are not learned but computed (PCA whitening of "
                f"2x2 patches): {_count_text(counts)}.",
            )
        ],
        facts={"recipe_whitening": counts},
    )


def _learned_filters(ctx: LabContext) -> Section:
    """Run E's first-layer filters beside Part 1's kernels, matched to them, and the same network untrained."""
    try:
        model, history = lab_cnn(ctx)
    except PartSkipped as skip:
        return Section(key="convolution", title="", missing=f"learned filters: {skip}")
    filters.filter_grid(model, ctx.path("figures", "learned_filters.png"), columns=8)  # two bands: readable cells
    trained = filters.match_filters(model)
    untrained = filters.match_filters(_untrained_twin(model))
    counts, initial = filters.summarize_filters(trained), filters.summarize_filters(untrained)
    epochs, accuracy = len(history["val_accuracy"]), history["val_accuracy"][-1]
    changed = sum(row.category != before.category for row, before in zip(trained, untrained, strict=True))
    best = max(trained, key=lambda row: row.similarity if row.category != "colour" else -1)
    mean_similarity = [float(np.mean([row.similarity for row in rows])) for rows in (trained, untrained)]
    answer = (
        f"Of the {len(trained)} first-layer filters of run E ({LAB_RUNS[BEST_RUN][0]}, "
        f"{epochs} epoch{'s' * (epochs > 1)}, "
        f"validation accuracy {accuracy:.1%}), {_count_text(counts)}. The same network untrained (same seed) "
        f"had {_count_text(initial)}: random filters look like colour detectors because their three channels "
        f"are drawn independently, so training's work is the difference: {changed} of the {len(trained)} filters "
        "changed category. The grey kernels' mean "
        f"similarity to their closest classical kernel went from {mean_similarity[1]:.2f} to "
        f"{mean_similarity[0]:.2f}; the closest match is filter {best.index}, {best.best} at {best.similarity:.2f}."
    )
    whitening = _recipe_whitening(ctx)
    return Section(
        key="convolution",
        title="",
        figures=[
            (
                "figures/learned_filters.png",
                f"Run E's {len(trained)} learned first-layer filters beside Part 1's Gaussian and Sobel kernels, "
                "each titled with its category and closest classical kernel",
            ),
            *whitening.figures,
        ],
        tables=[
            Table(
                "How many filters of each kind",
                ["category", "trained", "untrained (same seed)"],
                [[category, counts[category], initial[category]] for category in filters.CATEGORIES],
            ),
            Table(
                "Learned filters and their closest classical kernel (cosine similarity of the grey kernel)",
                ["filter", "closest kernel", "similarity", "colour share", "category", "untrained: category"],
                [
                    [
                        row.index,
                        row.best,
                        f"{row.similarity:.2f}",
                        f"{row.colour_share:.2f}",
                        row.category,
                        before.category,
                    ]
                    for row, before in zip(trained, untrained, strict=True)
                ],
            ),
        ],
        answers=[("Does a trained CNN learn filters like these by itself?", answer), *whitening.answers],
        facts={"learned_filters": counts, "untrained_filters": initial, **whitening.facts},
    )


def _answers(image, kernels, shapes, responses, valid_sizes, same_sizes) -> tuple[list, dict]:
    """Questions 1-6, answered from the measured responses; also the measurements the facts keep."""
    height, width = image.shape[:2]
    channels = 1 if image.ndim == 2 else image.shape[2]
    gaussian_name = next(iter(kernels))
    sharp, blurred = _mean_neighbour_difference(image), _mean_neighbour_difference(responses[gaussian_name])
    edge = _edge_test()
    sobel_x_mean, sobel_y_mean = (float(np.abs(responses[name]).mean()) for name in ("Sobel X", "Sobel Y"))
    kernel_sizes = ", ".join(f"{name} {_shape(kernel.shape)}" for name, kernel in kernels.items())
    valid_parts = [
        f"{name}: {_shape(shapes[name]['valid'])} = ({height} - {kernel.shape[0]} + 1) x "
        f"({width} - {kernel.shape[1]} + 1)"
        for name, kernel in kernels.items()
    ]
    same_shapes = sorted({_shape(shapes[name]["same"]) for name in kernels})
    use = _border_use()
    full_gauss = shapes[gaussian_name]["full"]
    answers = [
        (
            "1. What do the Gaussian, Sobel X and Sobel Y filters do to the image?",
            f"The Gaussian blurs: adjacent pixels of the original differ by {sharp:.2f} grey levels on average, "
            f"after the 15x15 Gaussian by {blurred:.2f} ({sharp / blurred:.1f}x smoother). The Sobel filters are "
            "edge detectors that respond to change in one direction: on a test image with one vertical edge, "
            f"Sobel X responds up to {edge['Sobel X']:.0f} and Sobel Y {edge['Sobel Y']:.0f}, so Sobel X finds "
            "vertical edges (brightness changing along x) and Sobel Y horizontal ones. On ascent the mean "
            f"|response| is {sobel_x_mean:.1f} for Sobel X and {sobel_y_mean:.1f} for Sobel Y.",
        ),
        (
            "2. What size is the image, how many channels, and how many does a colour image have?",
            f"{height} x {width} pixels with {channels} channel{'s' if channels > 1 else ''} "
            f"({'a grey image: a 2-D array' if channels == 1 else 'a colour image'}). A colour image normally has "
            "3 channels: red, green and blue (like every CIFAR-10 image, 32 x 32 x 3).",
        ),
        (
            "3. What size are the filters?",
            f"{kernel_sizes}. (The responses are larger than the filters: e.g. the Gaussian's full response is "
            f"{_shape(full_gauss)}, which is the image size plus the filter size minus 1, not a filter size.)",
        ),
        (
            "4. What size is the response in mode 'same'?",
            f"{' and '.join(same_shapes)} for every filter: the same size as the {height} x {width} input, because "
            "'same' pads the image with zeros so the kernel's centre visits every pixel.",
        ),
        (
            "5. What size is the response in mode 'valid', and how does it depend on the filter size?",
            "; ".join(valid_parts) + ". 'valid' keeps only positions where the whole kernel lies inside the "
            "image, so each side shrinks by the filter size minus 1: n - k + 1.",
        ),
        (
            "6. Why are 'valid' convolutions a problem for CNNs with many layers?",
            "Every valid 3x3 layer cuts one pixel off each border (the side shrinks by 2), and border pixels "
            f"count less: in a 6x6 image a corner pixel feeds {use[0, 0]:.0f} output, a centre pixel {use[3, 3]:.0f}. "
            f"For a {CIFAR_SIDE}x{CIFAR_SIDE} CIFAR-10 image through the lab's {LAB_CONV_BLOCKS} conv + 2x2 max-pool "
            f"blocks the feature map goes {' -> '.join(valid_sizes)} with 'valid' but "
            f"{' -> '.join(same_sizes)} with 'same' padding: valid convolutions eat the image before a deep "
            "network is deep, and throw away what happens at the edges.",
        ),
    ]
    return answers, {"neighbour_difference": {"original": sharp, "gaussian": blurred}, "edge_test": edge}


def run(ctx: LabContext) -> Section:
    image = _ascent()
    kernels = {"Gaussian (sigma 4)": gaussian_kernel((15, 15), 4), "Sobel X": SOBEL_X, "Sobel Y": SOBEL_Y}
    shapes = {name: {mode: convolve(image, kernel, mode).shape for mode in MODES} for name, kernel in kernels.items()}
    responses = {name: convolve(image, kernel, "same") for name, kernel in kernels.items()}
    plot_responses(image, responses, ctx.path("figures", "convolution_same.png"))
    valid_sizes = _sizes_through_blocks(CIFAR_SIDE, "valid", LAB_CONV_BLOCKS)
    same_sizes = _sizes_through_blocks(CIFAR_SIDE, "same", LAB_CONV_BLOCKS)
    answers, measured = _answers(image, kernels, shapes, responses, valid_sizes, same_sizes)
    learned = _learned_filters(ctx)
    height, width = image.shape[:2]
    return Section(
        key="convolution",
        title="Part 1: Convolutions",
        intro=f"scipy's ascent image ({height} x {width}) convolved with `scipy.signal.convolve2d` (true "
        "convolution, zero padding) by a 15x15 Gaussian (sigma 4, MATLAB's fspecial) and the Sobel X and Y "
        "filters, in each of the modes full, same and valid.",
        figures=[
            ("figures/convolution_same.png", "The image and the absolute filter responses (mode 'same')"),
            *learned.figures,
        ],
        tables=[
            Table(
                "Response shapes per mode",
                ["filter", "kernel", *MODES],
                [[name, _shape(kernels[name].shape), *(_shape(shapes[name][m]) for m in MODES)] for name in kernels],
            ),
            Table(
                f"Feature-map side of a {CIFAR_SIDE}x{CIFAR_SIDE} image through conv 3x3 + max-pool 2x2 blocks",
                ["padding", "sides after each block"],
                [["valid", " -> ".join(valid_sizes)], ["same", " -> ".join(same_sizes)]],
            ),
            *learned.tables,
        ],
        answers=answers + learned.answers,
        facts={
            "image_shape": list(image.shape),
            "kernel_shapes": {name: list(kernel.shape) for name, kernel in kernels.items()},
            "response_shapes": {name: {m: list(s) for m, s in by_mode.items()} for name, by_mode in shapes.items()},
            **measured,
            **learned.facts,
        },
        missing=learned.missing,
    )
