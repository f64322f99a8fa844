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

from cnnlab.core.version import __version__ as __version__

_EXPORTS = {
    "cnnlab.carbon.settings": ["CarbonSettings"],
    "cnnlab.carbon.tracker": ["CarbonCallback"],
    "cnnlab.convolution": [
        "compare_with_cnn_layer",
        "convolve",
        "gaussian_kernel",
        "output_shape",
        "SOBEL_X",
        "SOBEL_Y",
    ],
    "cnnlab.core.errors": ["CnnlabError", "ConfigError", "DataError", "TrainingDiverged"],
    "cnnlab.core.runtime": ["configure_threads", "describe_devices", "pick_device"],
    "cnnlab.data.arrays": ["class_counts", "scale_images", "to_categorical"],
    "cnnlab.data.augment": ["Augmentation", "parse_augment_spec"],
    "cnnlab.data.cifar": ["CLASS_NAMES", "load_cifar10"],
    "cnnlab.data.dataset": ["ImageDataset"],
    "cnnlab.data.images": ["load_image", "load_images", "open_image"],
    "cnnlab.data.load": ["load_dataset"],
    "cnnlab.data.split": ["load_lab_data"],
    "cnnlab.evaluate.explain": [
        "grad_cam",
        "most_confused",
        "overlay_figure",
        "saliency",
        "top_losses",
        "top_losses_figure",
    ],
    "cnnlab.evaluate.export": ["export_onnx"],
    "cnnlab.evaluate.filters": ["feature_map_figure", "feature_maps", "filter_grid", "match_filters"],
    "cnnlab.evaluate.generalization": ["evaluate_rotated", "evaluate_sizes", "myrotate", "rotation_robustness_table"],
    "cnnlab.evaluate.imagenet": ["classify_photos", "decode_predictions"],
    "cnnlab.evaluate.metrics": ["confusion_matrix", "misclassified", "per_class_accuracy"],
    "cnnlab.evaluate.predict": ["evaluate_model", "predict_images"],
    "cnnlab.evaluate.tta": ["evaluate_tta"],
    "cnnlab.experiments.carbon_sweep": ["carbon_sweep"],
    "cnnlab.experiments.fine_tune": ["fine_tune"],
    "cnnlab.experiments.device_bench": ["measure_conv_throughput"],
    "cnnlab.experiments.recipes": ["fit_recipe", "Recipe", "RECIPES", "train_recipe"],
    "cnnlab.experiments.transfer": ["transfer_learning"],
    "cnnlab.experiments.tune.search": ["tune"],
    "cnnlab.experiments.tune.space": ["load_space", "parse_space"],
    "cnnlab.experiments.tune.study": ["TuneSettings"],
    "cnnlab.models.cnn": ["build_cnn", "CNNConfig", "LAB_MODELS"],
    "cnnlab.models.recipe_net": ["RecipeNetConfig"],
    "cnnlab.models.registry": ["create_model", "list_models", "load_model", "register_model"],
    "cnnlab.models.resnet50": ["preprocess_input"],
    "cnnlab.models.resnet50_classifier": ["ResNet50Config"],
    "cnnlab.models.resnet50_weights": ["load_resnet50"],
    "cnnlab.models.transfer_head": ["TransferHeadConfig"],
    "cnnlab.plots": [
        "augmentation_preview",
        "confusion_matrix_figure",
        "misclassified_gallery",
        "plot_results",
        "rotation_preview",
        "sample_grid",
    ],
    "cnnlab.train.callbacks": [
        "BackupAndRestore",
        "Callback",
        "CallbackList",
        "CSVLogger",
        "EarlyStopping",
        "History",
        "ProgbarLogger",
        "TerminateOnNaN",
    ],
    "cnnlab.train.model": ["Model"],
    "cnnlab.train.tensorboard": ["TensorBoard"],
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
