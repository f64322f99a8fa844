"""Part 5: Model generalization.

Rotated test images, training with augmentation, the model's mistakes and other input sizes. The lab's
best configuration of part 4 (run E) is tested on rotated images; the same configuration is trained
again with on-the-fly augmentation, and once with global average pooling instead of Flatten so that it
accepts any image size.
"""

from __future__ import annotations

import numpy as np

from cnnlab.core.errors import DataError
from cnnlab.data.arrays import class_indices
from cnnlab.data.augment import Augmentation
from cnnlab.data.cifar import accuracy_caveat
from cnnlab.evaluate import explain
from cnnlab.evaluate.generalization import LAB_SIZES, evaluate_rotated, evaluate_sizes, myrotate, resize_images
from cnnlab.evaluate.metrics import confusion_matrix, misclassified, per_class_accuracy
from cnnlab.lab.context import LabContext
from cnnlab.lab.p4_cnn import LAB_RUNS
from cnnlab.lab.store import Section, Table
from cnnlab.plots import (
    augmentation_preview,
    confusion_matrix_figure,
    misclassified_gallery,
    plot_results,
    rotation_preview,
)

ESTIMATED_SECONDS = {"full": 120, "quick": 35, "tiny": 15}
BEST_RUN = "E"  # part 4's best configuration in the lab: 2 conv, dense 32, dropout, batch 128
LAB_EPOCHS = (20, 4)  # full and quick, as part 4 trains run E
EXPLAINED_IMAGES = 8  # Grad-CAM maps per figure: the most confident mistakes, and correct images
TOP_LOSSES = 12
# The lab's kind of ImageDataGenerator: small rotations and shifts, and mirror images.
LAB_AUGMENTATION = dict(rotation_range=15, width_shift_range=0.1, height_shift_range=0.1, horizontal_flip=True)


def lab_cnn(ctx: LabContext):
    """Part 4's run E as part 5 tests it, and its history: trained once, shared with part 1's filters."""
    _label, build, batch_size = LAB_RUNS[BEST_RUN]
    return ctx.trained_model(BEST_RUN, build, batch_size, ctx.epochs(*LAB_EPOCHS))


def _grad_cam_figure(ctx: LabContext, model, data, indices, name: str, caption: str) -> tuple[list, float | None]:
    """Grad-CAM of the given test images as one figure; no figure when there are none."""
    if not len(indices):
        return [], None
    cams = explain.grad_cam(model, data.x_test[indices])
    explain.overlay_figure(cams, ctx.path("figures", name), true_labels=class_indices(data.y_test[indices]))
    return [(f"figures/{name}", f"{caption} (Grad-CAM at {cams.layer})")], explain.central_share(cams.maps)


def explain_mistakes(ctx: LabContext, model, probabilities: np.ndarray, mistakes) -> Section:
    """Where the model looks when it is right and when it is surest of a mistake (Grad-CAM), the test
    images with the highest loss and the most confused class pairs, and answers from those numbers."""
    data = ctx.lab_data()
    names = data.class_names
    correct = np.flatnonzero(probabilities.argmax(1) == class_indices(data.y_test))[:EXPLAINED_IMAGES]
    wrong_figures, wrong_share = _grad_cam_figure(
        ctx,
        model,
        data,
        mistakes.indices[:EXPLAINED_IMAGES],
        "gradcam_mistakes.png",
        "Where the augmented model looks in its most confident mistakes",
    )
    right_figures, right_share = _grad_cam_figure(
        ctx, model, data, correct, "gradcam_correct.png", "Where it looks in correctly classified test images"
    )
    losses = explain.top_losses(model, data.x_test, data.y_test, k=TOP_LOSSES)
    explain.top_losses_figure(data.x_test, losses, names, ctx.path("figures", "top_losses.png"))
    pairs = explain.most_confused(data.y_test, probabilities, names, k=5)
    worst, sure = losses[0], sum(row.probability > 0.9 for row in losses)
    answers = [
        (
            "Which test images cost the most loss, and which classes are confused?",
            f"The highest loss, {worst.loss:.2f}, is test image {worst.index}: true class {names[worst.true]}, "
            f"predicted {names[worst.predicted]} with probability {worst.probability:.0%} (the true class got "
            f"{worst.true_probability:.1%}). The loss is -log p(true class), so the top {len(losses)} are the images "
            f"whose true class got the least: at most {max(row.true_probability for row in losses):.1%}; {sure} of "
            "them were predicted with over 90% confidence. " + _confusion_sentence(pairs, len(mistakes)),
        )
    ]
    if wrong_share is not None and right_share is not None:
        answers.append(
            (
                "Where does the model look when it is right, and when it is wrong?",
                f"Grad-CAM puts {right_share:.0%} of its weight in the central quarter of the image (the middle "
                f"half of each side) for {len(correct)} correctly classified test images and {wrong_share:.0%} for "
                f"the {min(len(mistakes), EXPLAINED_IMAGES)} most confident mistakes; a map spread evenly would "
                "put 25% there. CIFAR-10's objects sit mostly in the centre, so a map far from it means the class "
                "score came from the background (sky, water, grass) rather than the object.",
            )
        )
    return Section(
        key="generalization",
        title="",
        figures=[
            *wrong_figures,
            *right_figures,
            ("figures/top_losses.png", f"The {len(losses)} test images with the highest loss: predicted / true"),
        ],
        tables=[
            Table(
                "Highest losses on the test images",
                ["test image", "true", "predicted", "p(predicted)", "p(true)", "loss"],
                [
                    [
                        row.index,
                        names[row.true],
                        names[row.predicted],
                        f"{row.probability:.3f}",
                        f"{row.true_probability:.3f}",
                        f"{row.loss:.2f}",
                    ]
                    for row in losses
                ],
            ),
            Table(
                "Most confused class pairs",
                ["true", "predicted", "images", "share of mistakes"],
                [[true, predicted, count, f"{count / max(len(mistakes), 1):.1%}"] for true, predicted, count in pairs],
            ),
        ],
        answers=answers,
        facts={
            "gradcam_central_share": {"correct": right_share, "mistakes": wrong_share},
            "top_losses": [[row.index, row.loss] for row in losses],
            "most_confused_pairs": [list(pair) for pair in pairs],
        },
    )


def _confusion_sentence(pairs: list[tuple[str, str, int]], mistakes: int) -> str:
    if not pairs:
        return "The model made no mistakes on these test images."
    true, predicted, count = pairs[0]
    listed = {(t, p) for t, p, _ in pairs}
    both_ways = sorted({tuple(sorted((t, p))) for t, p in listed if (p, t) in listed})
    return (
        f"The most frequent mistake is {true} taken for {predicted} ({count} of the {mistakes} mistakes); the "
        f"{len(pairs)} most frequent pairs hold {sum(c for _, _, c in pairs) / mistakes:.0%} of them"
        + (f", and {', '.join(f'{a} and {b}' for a, b in both_ways)} are confused both ways." if both_ways else ".")
    )


def _epochs_to_reach(accuracies: list[float], level: float) -> int | None:
    return next((epoch for epoch, value in enumerate(accuracies, 1) if value >= level), None)


def _epochs_text(epochs: int | None) -> str:
    return "never, within the epochs trained" if epochs is None else f"after {epochs} epoch{'s' * (epochs > 1)}"


def _size_refusal(model, x, y, size: int) -> str:
    """What a Flatten model says when it is given images of another size."""
    try:
        model.evaluate(resize_images(x[:8], size), y[:8])
    except DataError as error:
        return str(error)
    return "accepted"


def _mistakes(ctx: LabContext, data, augmented) -> dict:
    """The augmented model's mistakes: gallery, confusion matrix, per-class accuracy, explanations, answer."""
    probabilities = augmented.predict(data.x_test)
    mistakes = misclassified(data.y_test, probabilities)
    names = data.class_names
    misclassified_gallery(data.x_test, mistakes, path=ctx.path("figures", "misclassified.png"), class_names=names)
    confusion_matrix_figure(
        confusion_matrix(data.y_test, probabilities, data.num_classes),
        names,
        path=ctx.path("figures", "confusion.png"),
        title="Augmented model on the test images",
    )
    per_class = per_class_accuracy(data.y_test, probabilities, names)
    worst_class = min(per_class, key=lambda name: per_class[name])
    best_class = max(per_class, key=lambda name: per_class[name])
    true_name, predicted_name = _most_common_confusion(mistakes, names)
    answer = (
        "Which test images does the augmented model get wrong?",
        f"{len(mistakes):,} of {len(data.x_test):,} ({len(mistakes) / len(data.x_test):.1%}). The most frequent "
        f"mistake: {true_name} predicted as {predicted_name}; per class, {best_class} is recognised best "
        f"({per_class[best_class]:.1%}) and {worst_class} worst ({per_class[worst_class]:.1%}). The gallery "
        "shows the mistakes the model was surest of.",
    )
    return {
        "mistakes": mistakes,
        "per_class": per_class,
        "most_confused": [true_name, predicted_name],
        "best_and_worst_class": [best_class, worst_class],
        "explained": explain_mistakes(ctx, augmented, probabilities, mistakes),
        "answer": answer,
    }


def run(ctx: LabContext) -> Section:
    data = ctx.lab_data()
    caveat = accuracy_caveat(data.source)
    label, build, batch_size = LAB_RUNS[BEST_RUN]
    epochs = ctx.epochs(*LAB_EPOCHS)
    model, history = lab_cnn(ctx)

    # 5.0 rotated test images: a quarter turn, or a half turn where a quarter would swap height and width
    turns = rotation_turns(data.input_shape)
    rotated = {**evaluate_rotated(model, data.x_test, data.y_test, turns), "degrees": 90 * turns}
    rotation_preview(data.x_test, myrotate(data.x_test, turns), path=ctx.path("figures", "rotated.png"))

    # 5.1-5.2 the same configuration trained with augmentation
    augment = Augmentation(**LAB_AUGMENTATION, seed=0)
    augmentation_preview(
        data.x_train,
        Augmentation(**LAB_AUGMENTATION, seed=1),
        labels=data.y_train,
        path=ctx.path("figures", "augmented_examples.png"),
        class_names=data.class_names,
    )
    augmented, augmented_history = ctx.trained_model(f"{BEST_RUN}_augmented", build, batch_size, epochs, augment)
    plot_results(augmented_history, ctx.path("figures", "run_augmented.png"), title=f"{label}, with augmentation")
    augmented_test = augmented.evaluate(data.x_test, data.y_test)[1]
    augmented_rotated = evaluate_rotated(augmented, data.x_test, data.y_test, turns)["rotated"]

    found = _mistakes(ctx, data, augmented)
    mistakes, per_class, explained = found["mistakes"], found["per_class"], found["explained"]
    size_answers, sizes = _size_answers(ctx, model, data, rotated, caveat)
    plain_acc, augmented_acc = history["accuracy"], augmented_history["accuracy"]
    answers = [
        _rotation_answer(label, rotated, augmented_rotated, caveat, data),
        _memory_answer(ctx, data),
        *_training_answers(history, augmented_history, rotated, augmented_test, caveat),
        *size_answers,
        found["answer"],
    ]
    return Section(
        key="generalization",
        title="Part 5: Model generalization",
        intro=f"Run {BEST_RUN} of part 4 ({label}, {epochs} epochs) on rotated test images; the same "
        f"configuration trained with augmentation ({', '.join(f'{k}={v}' for k, v in LAB_AUGMENTATION.items())}) "
        f"and with global average pooling instead of Flatten. {len(data.x_test):,} test images{caveat}.",
        figures=[
            ("figures/rotated.png", f"Test images (top) and the same turned {rotated['degrees']} degrees (bottom)"),
            ("figures/augmented_examples.png", "Training images and augmented versions of them"),
            ("figures/run_augmented.png", "Training with augmentation: loss and accuracy per epoch"),
            ("figures/misclassified.png", "The augmented model's most confident mistakes"),
            ("figures/confusion.png", "Confusion matrix of the augmented model on the test images"),
            *explained.figures,
        ],
        tables=[
            *_tables(label, rotated, augmented_test, augmented_rotated, plain_acc, augmented_acc, per_class, sizes),
            *explained.tables,
        ],
        answers=answers + explained.answers,
        facts={
            "rotated": rotated,
            "augmented": {
                "test_accuracy": augmented_test,
                "rotated_accuracy": augmented_rotated,
                "train_accuracy": augmented_acc,
                "val_accuracy": augmented_history["val_accuracy"],
            },
            "plain_train_accuracy": plain_acc,
            "misclassified": len(mistakes),
            "most_confused": found["most_confused"],
            "per_class_accuracy": per_class,
            "best_and_worst_class": found["best_and_worst_class"],
            "sizes": {
                size_text(size).replace(" x ", "x") if isinstance(size, tuple) else str(size): accuracy
                for size, accuracy in sizes.items()
            },  # fmt: skip
            **explained.facts,
        },
    )


def rotation_turns(input_shape) -> int:
    """Quarter turns to test with: 1 (the lab's 90 degrees) for square images, 2 (180 degrees) otherwise.

    A quarter turn of a 42x64 image is 64x42, which a Flatten model refuses (its dense layer has one input
    per pixel of the last feature map); upside down keeps the shape and asks the same question: did the
    filters learn upright objects only? Cropping to a square first would test a crop the model never saw.
    """
    height, width = input_shape[:2]
    return 1 if height == width else 2


def _rotation_answer(label: str, rotated: dict, augmented_rotated: float, caveat: str, data):
    """Question 24: the plain and the augmented model on turned test images (a quarter turn if square)."""
    degrees, (height, width) = rotated["degrees"], data.input_shape[:2]
    why_half = (
        ""
        if degrees == 90
        else f"The images are {height}x{width}, not square: turned 90 degrees they would be {width}x{height}, "
        f"which this Flatten model cannot take, so they are turned {degrees} degrees (upside down) instead. "
    )
    return (
        "24. What is the test accuracy on rotated test images, compared to unrotated ones? Why the difference?",
        why_half + f"Run {BEST_RUN} ({label}) scores {rotated['original']:.1%} on the test images and "
        f"{rotated['rotated']:.1%} on the same images turned {degrees} degrees{caveat}: "
        f"{abs(rotated['drop']):.1%} points {'lower' if rotated['drop'] >= 0 else 'higher'}, where guessing would "
        f"score {1 / data.num_classes:.0%}. "
        "The filters learned what upright objects look like (sky above, wheels and legs below); no training "
        "image showed them turned, and neither convolution nor pooling is invariant to rotation. The model "
        f"trained with augmentation (rotations of at most {LAB_AUGMENTATION['rotation_range']} degrees) scores "
        f"{augmented_rotated:.1%} on the turned images, "
        + (
            f"so small rotations help a little with {degrees}-degree turns."
            if augmented_rotated > rotated["rotated"] + 0.02
            else f"so small rotations do not teach {degrees}-degree turns."
        ),
    )


def _tables(label, rotated, augmented_test, augmented_rotated, plain_acc, augmented_acc, per_class, sizes):
    """Part 5's tables: accuracy on turned images, training accuracy per epoch, per class, at other sizes."""
    return [
        Table(
            "Test accuracy",
            ["model", "test images", f"turned {rotated['degrees']} degrees"],
            [
                [f"run {BEST_RUN}: {label}", f"{rotated['original']:.3f}", f"{rotated['rotated']:.3f}"],
                ["same, with augmentation", f"{augmented_test:.3f}", f"{augmented_rotated:.3f}"],
            ],
        ),
        Table(
            "Training accuracy per epoch",
            ["epoch", "without augmentation", "with augmentation"],
            [[i + 1, f"{a:.3f}", f"{b:.3f}"] for i, (a, b) in enumerate(zip(plain_acc, augmented_acc, strict=False))],
        ),
        Table(
            "Accuracy per class (augmented model)",
            ["class", "accuracy"],
            [[name, f"{value:.3f}"] for name, value in per_class.items()],
        ),
        Table(
            "Global-average-pooling model at other input sizes",
            ["size", "test accuracy"],
            [[size_text(size), f"{accuracy:.3f}"] for size, accuracy in sizes.items()],
        ),
    ]


def _memory_answer(ctx: LabContext, data) -> tuple[str, str]:
    """Question 25, from the bytes the lab's images take as held, as float32, and all of CIFAR-10."""
    in_memory = data.x_train.nbytes + data.x_val.nbytes
    as_float32 = in_memory * 4 // data.x_train.itemsize
    all_train = 50_000 * int(np.prod(data.x_train.shape[1:])) * 4
    all_train_text = (
        f", all 50,000 CIFAR-10 training images {all_train / 2**20:.0f} MB as float32" if ctx.is_cifar10() else ""
    )
    return (
        "25. How would you change the image generator if the training images did not fit in memory? The drawback?",
        f"Here they fit easily: the {len(data.x_train) + len(data.x_val):,} training and validation images take "
        f"{in_memory / 2**20:.0f} MB as {data.x_train.dtype} ({as_float32 / 2**20:.0f} MB as float32)"
        f"{all_train_text}. "
        "If they did not, the generator would read each batch from disk as it is needed (Keras' "
        "flow_from_directory, or a PyTorch Dataset that loads files in __getitem__) instead of flow() on an "
        "array. The drawback: every epoch reads and decodes every image again, so training waits on the disk "
        "and the CPU (worker processes and prefetching hide part of that).",
    )


def _training_answers(history: dict, augmented_history: dict, rotated: dict, augmented_test: float, caveat: str):
    """Questions 26 and 27: how training accuracy rises with and without augmentation; other augmentations."""
    plain_acc, augmented_acc = history["accuracy"], augmented_history["accuracy"]
    level = round(0.9 * min(plain_acc[-1], augmented_acc[-1]), 2)
    plain_gap = plain_acc[-1] - history["val_accuracy"][-1]
    augmented_gap = augmented_acc[-1] - augmented_history["val_accuracy"][-1]
    unused = [k for k in Augmentation(seed=None).config() if k not in {*LAB_AUGMENTATION, "fill_mode", "cval", "seed"}]

    return [
        (
            "26. How fast does the training accuracy rise with augmentation, compared to without? Why? What to change "
            "to train more?",
            f"Without augmentation the training accuracy reaches {level:.0%} "
            f"{_epochs_text(_epochs_to_reach(plain_acc, level))} and ends at {plain_acc[-1]:.1%} after "
            f"{len(plain_acc)}; with augmentation it reaches {level:.0%} "
            f"{_epochs_text(_epochs_to_reach(augmented_acc, level))} and ends at {augmented_acc[-1]:.1%}. "
            + (
                "So it rises more slowly with augmentation: "
                if augmented_acc[-1] < plain_acc[-1]
                else "Here it did not rise more slowly (too few epochs for memorising to show), though in general "
            )
            + "each epoch shows the network new variants of every image, so it cannot memorise them. The gap "
            f"between training and validation accuracy went from {plain_gap:+.1%} without to {augmented_gap:+.1%} "
            f"with augmentation; test accuracy from {rotated['original']:.1%} to {augmented_test:.1%}{caveat}. To "
            "train more, raise the number of epochs (the steps per epoch stay the training-set size divided by "
            "the batch size).",
        ),
        (
            "27. What other augmentations could be used?",
            f"This run used {', '.join(f'{k}={v}' for k, v in LAB_AUGMENTATION.items())}. cnnlab's Augmentation "
            f"also offers (unused here): {', '.join(unused)}, and the fill modes nearest/constant/reflect/wrap. "
            "Beyond Keras' generator: random crops with padding, cutout/random erasing, mixup and cutmix, colour "
            "jitter (saturation, hue, contrast), Gaussian noise and blur, and learned policies such as AutoAugment or "
            "RandAugment.",
        ),
    ]


def size_text(size: int | tuple[int, int]) -> str:
    """'32 x 32' for a square side, '42 x 64' for (height, width)."""
    height, width = (size, size) if isinstance(size, int) else size
    return f"{height} x {width}"


def pooled_sizes(input_shape) -> list:
    """The sizes the pooling model is tested at: the lab's squares, or for other images their own shape
    scaled by 3/4, 1, 3/2 and 2 (a square would squash them)."""
    height, width = input_shape[:2]
    if height == width:
        return list(LAB_SIZES)
    return [(round(height * f), round(width * f)) for f in (0.75, 1.0, 1.5, 2.0)]


def _size_answers(ctx: LabContext, model, data, rotated: dict, caveat: str) -> tuple[list[tuple[str, str]], dict]:
    """Questions 28 and 29: the Flatten model refuses other sizes, a global-average-pooling twin (trained
    here) accepts them. Returns the answers and the twin's test accuracy per size."""
    _label, build, batch_size = LAB_RUNS[BEST_RUN]
    epochs = ctx.epochs(*LAB_EPOCHS)
    height, width = data.input_shape[:2]
    own = height if height == width else (height, width)
    tested = pooled_sizes(data.input_shape)
    other_size = next(size for size in tested if size != own)
    refusal = _size_refusal(model, data.x_test, data.y_test, other_size)
    pooled, _ = ctx.trained_model(f"{BEST_RUN}_gap", {**build, "head": "gap"}, batch_size, epochs)
    sizes = evaluate_sizes(pooled, data.x_test, data.y_test, tested)
    best_size = max(sizes, key=sizes.get)
    conv_blocks, last_filters = build["n_conv_layers"], build["n_filters"] * 2 ** (build["n_conv_layers"] - 1)

    def last_map(size) -> tuple[int, int]:
        h, w = (size, size) if isinstance(size, int) else size
        return h // 2**conv_blocks, w // 2**conv_blocks

    flatten_inputs = {size: last_map(size)[0] * last_map(size)[1] * last_filters for size in (own, other_size)}
    answers = [
        (
            "28. This CNN was trained on 32 x 32 images: can it be applied to images of another size?",
            f"Not as built: Flatten turns the last {size_text(last_map(own))} x {last_filters} feature map into "
            f"{flatten_inputs[own]:,} numbers, and the dense layer after it has exactly that many inputs per node. "
            f"At {size_text(other_size)} the map would give {flatten_inputs[other_size]:,}. Asked to, cnnlab "
            f"refuses: \u201c{refusal}\u201d",
        ),
        (
            "29. Can a CNN be trained on one size and applied to any size? How?",
            "Yes, if nothing in it depends on the size: convolutions and pooling do not, so replace Flatten with "
            "global average pooling (one number per channel, whatever the map's size) or make the classifier "
            "convolutional (1x1 convolutions, a fully convolutional network). The same configuration with global "
            f"average pooling, trained on {size_text(own)} images, scores "
            + ", ".join(f"{accuracy:.1%} at {size_text(size)}" for size, accuracy in sizes.items())
            + f"{caveat}. It runs at every size. "
            + (
                f"At {size_text(own)} it scores {sizes[own]:.1%} against {rotated['original']:.1%} for run "
                f"{BEST_RUN} with Flatten: averaging away where features are costs a network this small accuracy. "
                if sizes.get(own, 1.0) < rotated["original"] - 0.02
                else ""
            )
            + (
                f"It is best at {size_text(own)}, the size it was trained on, where objects have the sizes its "
                "filters learned."
                if best_size == own
                else f"Here it is best at {size_text(best_size)}, not at the {size_text(own)} it was trained on."
            ),
        ),
    ]
    return answers, sizes


def _most_common_confusion(mistakes, names) -> tuple[str, str]:
    pairs = np.stack([mistakes.true, mistakes.predicted], axis=1) if len(mistakes) else np.zeros((0, 2), int)
    if not len(pairs):
        return "", ""
    values, counts = np.unique(pairs, axis=0, return_counts=True)
    true, predicted = values[counts.argmax()]
    return names[true], names[predicted]
