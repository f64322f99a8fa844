"""cnnlab: the CIFAR-10 CNN image-classification lab as a Keras-like toolkit on PyTorch.

    from cnnlab import load_lab_data, build_cnn, plot_results
    data = load_lab_data()                      # 7,500 / 2,500 / 2,000 images in [-1, 1]
    model = build_cnn(n_conv_layers=2, n_filters=16)
    history = model.fit(data.x_train, data.y_train, batch_size=20, epochs=20,
                        validation_data=(data.x_val, data.y_val))
    model.evaluate(data.x_test, data.y_test)    # [loss, accuracy]
    plot_results(history, "results.png")
"""

from cnnlab.convolution import SOBEL_X, SOBEL_Y, compare_with_cnn_layer, convolve, gaussian_kernel, output_shape
from cnnlab.data import (
    CLASS_NAMES,
    class_counts,
    load_cifar10,
    load_lab_data,
    scale_images,
    to_categorical,
)
from cnnlab.device import configure_threads, describe_devices, measure_conv_throughput, pick_device
from cnnlab.errors import CnnlabError, ConfigError, DataError, TrainingDiverged
from cnnlab.models import build_cnn, load_model
from cnnlab.plots import plot_results, sample_grid
from cnnlab.training import Callback, EarlyStopping, History, Model

__version__ = "0.1.0"

__all__ = [
    "CLASS_NAMES", "SOBEL_X", "SOBEL_Y", "Callback", "CnnlabError", "ConfigError", "DataError", "EarlyStopping",
    "History", "Model", "TrainingDiverged", "build_cnn", "class_counts", "compare_with_cnn_layer",
    "configure_threads", "convolve", "describe_devices", "gaussian_kernel", "load_cifar10", "load_lab_data",
    "load_model", "measure_conv_throughput", "output_shape", "pick_device", "plot_results", "sample_grid",
    "scale_images", "to_categorical",
]
