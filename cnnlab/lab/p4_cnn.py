"""Part 4: the lab's CNN configurations, trained and compared, and its questions answered."""

from __future__ import annotations

from cnnlab.data.arrays import class_indices
from cnnlab.evaluate import filters
from cnnlab.lab.context import LabContext
from cnnlab.lab.store import Section, Table
from cnnlab.models.cnn import LAB_MODELS
from cnnlab.plots import plot_results
from cnnlab.train.summary import summary_rows

ESTIMATED_SECONDS = {"full": 460, "quick": 100, "tiny": 15}

# Run key -> (label, build_cnn keywords of its LAB_MODELS preset, batch size).
LAB_RUNS = {
    key: (label, LAB_MODELS[key].build_kwargs(), batch_size)
    for key, label, batch_size in [
        ("A", "2 conv, no dense", 20),
        ("B", "2 conv, dense 50", 20),
        ("C", "4 conv, dense 50", 20),
        ("D", "4 conv, dense 50, dropout 0.5", 20),
        ("E", "2 conv, dense 32, dropout, batch 128", 128),
    ]
}


def train_run(ctx: LabContext, key: str, build: dict, batch_size: int, epochs: int) -> dict:
    """Train (or reload) one configuration in its own resumable run folder and measure its accuracies."""
    data = ctx.lab_data()
    model, history = ctx.trained_model(key, build, batch_size, epochs)
    plot_results(history, ctx.path("figures", f"run_{key}.png"), title=f"run {key}")
    counts = model.count_params()
    test_loss, test_accuracy = model.evaluate(data.x_test, data.y_test)
    result = {
        "key": key,
        "batch_size": batch_size,
        "epochs": epochs,
        "params": counts.total,
        "trainable": counts.trainable,
        "train_accuracy": model.evaluate(data.x_train, data.y_train)[1],
        "val_accuracy": history["val_accuracy"][-1],
        "best_val_accuracy": max(history["val_accuracy"]),
        "test_loss": test_loss,
        "test_accuracy": test_accuracy,
    }
    return result


def feature_maps_of_one_image(ctx: LabContext, key: str, model) -> tuple[tuple[str, str], Table, str, list]:
    """The first test image through each conv block of run ``key`` (after BatchNorm and pooling): a
    figure of the most active channels, a table of the block shapes, a sentence on what Conv2D does, the shapes."""
    data = ctx.lab_data()
    image = data.x_test[0]
    names = data.class_names
    label = names[int(class_indices(data.y_test[:1])[0])]
    blocks = filters.feature_maps(model, image)
    filters.feature_map_figure(image, blocks, ctx.path("figures", "feature_maps.png"))
    shapes = [tuple(image.shape), *(block.shape for block in blocks)]
    table = Table(
        f"Feature maps of test image 0 ({label}) through run {key}'s conv blocks, after BatchNorm and pooling",
        ["block output", "shape (height, width, channels)", "most active channels", "their mean activation"],
        [
            [block.name, str(block.shape), ", ".join(map(str, block.channels[:4])),
             ", ".join(f"{value:.2f}" for value in block.mean_activation[:4])]
            for block in blocks
        ],
    )  # fmt: skip
    sentence = (
        f"Traced on test image 0 ({label}) through run {key}: {' -> '.join(map(str, shapes))}. The channels "
        f"go {' -> '.join(str(shape[2]) for shape in shapes)} (each block's number of filters) while height and "
        f"width go {' -> '.join(str(shape[0]) for shape in shapes)}: the conv layers keep them, each 2x2 max "
        "pooling halves them."
    )
    figure = (
        "figures/feature_maps.png",
        f"Test image 0 ({label}) through run {key}: the most active channels after each conv block's "
        "BatchNorm and pooling, with the map's (height, width, channels)",
    )
    return figure, table, sentence, [list(shape) for shape in shapes]


def run(ctx: LabContext) -> Section:
    epochs = ctx.epochs(20, 4)
    results = {}
    for key, (_label, build, batch_size) in LAB_RUNS.items():
        results[key] = train_run(ctx, key, build, batch_size, epochs)
    best_key = max(results, key=lambda k: results[k]["test_accuracy"])
    rows = [
        [
            key,
            LAB_RUNS[key][0],
            r["batch_size"],
            r["epochs"],
            f"{r['params']:,}",
            f"{r['train_accuracy']:.3f}",
            f"{r['best_val_accuracy']:.3f}",
            f"{r['test_accuracy']:.3f}",
        ]
        for key, r in results.items()
    ]
    model_c = ctx.cache["models"]["C"]
    maps_figure, maps_table, maps_sentence, map_shapes = feature_maps_of_one_image(ctx, "C", model_c)
    answers = _answers(results, best_key, ctx.lab_data(), model_c, maps_sentence)
    return Section(
        key="cnn",
        title="Part 4: 2D CNN",
        intro=f"Five configurations from the lab, each trained {epochs} epochs with Adam (learning rate 0.01) on "
        "the training images, validated on the validation images and tested once on the test images.",
        figures=[*((f"figures/run_{k}.png", f"Run {k}: {LAB_RUNS[k][0]}") for k in results), maps_figure],
        tables=[
            Table(
                "The lab's configurations",
                ["run", "model", "batch", "epochs", "parameters", "train acc", "best val acc", "test acc"],
                rows,
            ),
            maps_table,
        ],
        answers=answers,
        facts={"runs": results, "best": best_key, "feature_map_shapes": map_shapes},
    )


def _answers(results: dict, best_key: str, data, model_c, maps_sentence: str) -> list[tuple[str, str]]:
    """Questions 13-23, answered from the runs' results, run C's layers and the data's image size."""
    a, c, d = results["A"], results["C"], results["D"]
    layer_rows = summary_rows(model_c.network, model_c.input_shape)
    biggest = max(layer_rows, key=lambda row: row[3])
    conv_rows = [row for row in layer_rows if row[1] == "Conv2D"]
    second_conv = conv_rows[1]
    filters_in, filters_out = 16, 32
    height, width, channels = data.input_shape
    n_train = len(data.x_train)
    # Without pooling, the flattened 4-conv feature map would stay height x width x 128 before a 50-node dense
    # layer; four 2x2 poolings shrink each side 16-fold.
    dense_without_pool = height * width * 128 * 50 + 50
    dense_with_pool = (height // 16) * (width // 16) * 128 * 50 + 50
    return [
        _overfitting_answer(a, n_train),
        (
            "14. Why a smaller batch size than the 10,000 of the DNN lab?",
            f"An image batch is large: the first conv layer alone outputs {height}x{width}x16 floats per image, "
            f"{height * width * 16 * 4 * 10_000 / 2**20:,.0f} MB for 10,000 images, and every layer's activations "
            "are kept for back-propagation. Small batches fit in memory and give many more weight updates per epoch "
            f"({-(-n_train // 20)} steps at batch 20 against 1 at batch 10,000).",
        ),
        (
            "15. How many trainable parameters, and where are most?",
            f"Run C has {c['trainable']:,} trainable parameters ({c['params']:,} in all, counting BatchNorm's moving "
            f"statistics as Keras does). The largest layer is {biggest[0]} ({biggest[1]}) with {biggest[3]:,}.",
        ),
        (
            "16. Input and output of a Conv2D layer?",
            f"A 4-D batch (batch, height, width, channels) in, a 4-D batch out: {conv_rows[0][0]} maps the "
            f"(None, {height}, {width}, {channels}) images to {conv_rows[0][2]}; with 'same' padding height and "
            "width stay and the channels become the number of filters. " + maps_sentence,
        ),
        (
            "17. Is the batch size always the first dimension?",
            "Yes: Keras' data_format only moves the channels (channels_last NHWC or channels_first NCHW); the batch "
            "stays first. PyTorch is NCHW; cnnlab accepts NHWC arrays and feeds them as channels_last memory.",
        ),
        (
            "18. 128 filters on a 32-channel input give how many output channels?",
            "128: each filter spans all 32 input channels and yields one output channel.",
        ),
        (
            "19. Why are a Conv2D layer's parameters not filters x kernel coefficients (+ bias)?",
            f"Each filter also spans every input channel: {second_conv[0]} has 3x3x{filters_in} weights per filter "
            f"times {filters_out} filters plus {filters_out} biases = "
            f"{3 * 3 * filters_in * filters_out + filters_out:,}, which is the {second_conv[3]:,} in its summary row.",
        ),
        (
            "20. How does max pooling reduce the number of parameters?",
            "It has none itself, but it shrinks the feature map 4x per block, and the dense layer after Flatten "
            f"grows with the map: with pooling run C's dense layer holds {dense_with_pool:,} parameters; without "
            f"it the {height}x{width}x128 map would need {dense_without_pool:,}.",
        ),
        (
            "21. How much did dropout improve the test accuracy?",
            f"From {c['test_accuracy']:.1%} (run C) to {d['test_accuracy']:.1%} (run D): "
            f"{d['test_accuracy'] - c['test_accuracy']:+.1%} points.",
        ),
        (
            "22. Other regularization, and L2 for the conv layers?",
            "L2 (weight decay) and L1 penalties, data augmentation, early stopping, label smoothing, smaller models. "
            "In cnnlab: build_cnn(l2=1e-4) adds 1e-4 x sum(w^2) of every conv and dense kernel to the loss, "
            "like Keras' kernel_regularizer=l2(1e-4).",
        ),
        (
            "23. How high a test accuracy, with which configuration?",
            f"Among these runs, {best_key} ({LAB_RUNS[best_key][0]}) is best with "
            f"{results[best_key]['test_accuracy']:.1%}. The recipe in the 'best configuration' part goes further.",
        ),
    ]


def _overfitting_answer(a: dict, n_train: int) -> tuple[str, str]:
    """Question 13: run A's gap between training and test accuracy."""
    gap = a["train_accuracy"] - a["test_accuracy"]
    return (
        "13. How big is the difference between training and test accuracy?",
        f"Run A reaches {a['train_accuracy']:.1%} on its training images but {a['test_accuracy']:.1%} on the test "
        f"images: a gap of {gap:.1%} points. "
        + (
            f"That gap is the signature of overfitting: the network memorises its {n_train:,} images."
            if gap > 0.1
            else "The gap is small, so this run is not overfitting much."
        ),
    )
