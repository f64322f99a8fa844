"""cnnlab: the CIFAR-10 CNN image-classification lab as a Keras-like toolkit on PyTorch.

    from cnnlab import load_lab_data, build_cnn, plot_results
    data = load_lab_data()                      # 7,500 / 2,500 / 2,000 images in [-1, 1]
    model = build_cnn(n_conv_layers=2, n_filters=16)
    history = model.fit(data.x_train, data.y_train, batch_size=20, epochs=20,
                        validation_data=(data.x_val, data.y_val))
    model.evaluate(data.x_test, data.y_test)    # [loss, accuracy]
    plot_results(history, "results.png")

Names are imported on first use (PEP 562), so `import cnnlab` and `cnnlab --help` stay quick
instead of loading torch, scipy and matplotlib up front.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "cnnlab.convolution": [
        "SOBEL_X",
        "SOBEL_Y",
        "compare_with_cnn_layer",
        "convolve",
        "gaussian_kernel",
        "output_shape",
    ],
    "cnnlab.data": ["CLASS_NAMES", "class_counts", "load_cifar10", "load_lab_data", "scale_images", "to_categorical"],
    "cnnlab.datasets": ["ImageDataset", "load_dataset"],
    "cnnlab.images": ["load_image", "load_images", "open_image"],
    "cnnlab.device": ["configure_threads", "describe_devices", "measure_conv_throughput", "pick_device"],
    "cnnlab.errors": ["CnnlabError", "ConfigError", "DataError", "TrainingDiverged"],
    "cnnlab.models": [
        "CNNConfig",
        "LAB_MODELS",
        "build_cnn",
        "create_model",
        "list_models",
        "load_model",
        "register_model",
    ],
    "cnnlab.plots": [
        "augmentation_preview",
        "confusion_matrix_figure",
        "misclassified_gallery",
        "plot_results",
        "rotation_preview",
        "sample_grid",
    ],
    "cnnlab.training": ["Callback", "EarlyStopping", "History", "Model"],
    "cnnlab.callbacks": ["BackupAndRestore", "CSVLogger", "CallbackList", "ProgbarLogger", "TerminateOnNaN"],
    "cnnlab.carbon": ["CarbonCallback", "CarbonSettings", "carbon_sweep"],
    "cnnlab.augment": ["Augmentation", "parse_augment_spec"],
    "cnnlab.explain": [
        "feature_map_figure",
        "feature_maps",
        "filter_grid",
        "grad_cam",
        "match_filters",
        "most_confused",
        "overlay_figure",
        "saliency",
        "top_losses",
        "top_losses_figure",
    ],
    "cnnlab.evaluation": [
        "confusion_matrix",
        "evaluate_rotated",
        "evaluate_sizes",
        "misclassified",
        "myrotate",
        "per_class_accuracy",
        "rotation_robustness_table",
    ],
    "cnnlab.pretrained": [
        "classify_photos",
        "decode_predictions",
        "load_resnet50",
        "preprocess_input",
        "TransferHeadConfig",
        "transfer_learning",
    ],
    "cnnlab.recipes": ["RECIPES", "Recipe", "evaluate_tta", "RecipeNetConfig", "fit_recipe", "train_recipe"],
    "cnnlab.tuning": ["TuneSettings", "load_space", "parse_space", "tune"],
    "cnnlab.predict": ["evaluate_model", "predict_images"],
    "cnnlab.export": ["export_onnx"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *__all__])
