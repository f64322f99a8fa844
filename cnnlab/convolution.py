"""Part 1 of the lab: classical 2-D convolution filters, and how a CNN layer relates to them.

``convolve`` wraps ``scipy.signal.convolve2d`` (true convolution: the kernel is flipped) and applies a
2-D kernel to each channel of a colour image. ``conv_layer_response`` runs the same arithmetic through
a PyTorch ``Conv2d`` layer, which computes cross-correlation (no flip) with kernels that span all input
channels; ``compare_with_cnn_layer`` shows the two agree only once the kernel is flipped.

"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import signal

from cnnlab.core.errors import ConfigError, DataError

MODES = ("full", "same", "valid")


# The lab's edge filters: SOBEL_X responds to vertical edges, SOBEL_Y to horizontal ones.
SOBEL_X = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=np.float64)
SOBEL_Y = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float64)
SOBEL_X.flags.writeable = False
SOBEL_Y.flags.writeable = False


FILTER_SPEC_HELP = (
    "gaussian:SIZE,SIGMA (SIZE is N or RxC, e.g. gaussian:15,4), sobel-x, sobel-y, "
    "kernel:ROW;ROW;... with comma-separated values (e.g. 'kernel:1,0,-1;2,0,-2;1,0,-1'), "
    "or a kernel file (.npy, or .txt/.csv with one row per line)"
)


ASCENT_HELP = "pass an IMAGE path instead (any PNG/JPEG/...), e.g. `cnnlab convolve photo.jpg`"


def gaussian_kernel(shape: int | tuple[int, int] = (3, 3), sigma: float = 0.5) -> np.ndarray:
    """MATLAB's ``fspecial('gaussian', shape, sigma)``, so the lab's filters match the course's.

    Values below ``eps * max`` are set to exactly zero and the kernel is normalised to sum to 1.
    """
    rows, cols = (shape, shape) if isinstance(shape, int) else shape
    if rows < 1 or cols < 1:
        raise ConfigError(f"Gaussian kernel shape must be positive, got {(rows, cols)}; e.g. (15, 15)")
    if not sigma > 0:
        raise ConfigError(f"Gaussian sigma must be positive, got {sigma}; e.g. 4")
    y = np.arange(rows)[:, None] - (rows - 1) / 2
    x = np.arange(cols)[None, :] - (cols - 1) / 2
    kernel = np.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    kernel[kernel < np.finfo(kernel.dtype).eps * kernel.max()] = 0
    return kernel / kernel.sum()


def kernel_from_spec(spec: str) -> tuple[str, np.ndarray]:
    """Turn a command-line filter description into (label, kernel); the forms are in FILTER_SPEC_HELP."""
    text = spec.strip()
    lowered = text.lower()
    if lowered == "sobel-x":
        return "sobel-x", SOBEL_X.copy()
    if lowered == "sobel-y":
        return "sobel-y", SOBEL_Y.copy()
    if lowered == "gaussian" or lowered.startswith("gaussian:"):
        return _gaussian_from_spec(text)
    if lowered.startswith("kernel:"):
        kernel = _parse_kernel_rows(text)
        return f"kernel {_shape_text(kernel)}", kernel
    path = Path(text)
    if path.suffix.lower() in {".npy", ".txt", ".csv"} or path.exists():
        kernel = _read_kernel_file(path)
        return f"{path.name} {_shape_text(kernel)}", kernel
    raise ConfigError(f"unknown filter {spec!r}; use one of: {FILTER_SPEC_HELP}")


def _gaussian_from_spec(text: str) -> tuple[str, np.ndarray]:
    _, _, arguments = text.partition(":")
    if not arguments:
        size, sigma = (3, 3), 0.5  # fspecial's defaults
    else:
        size_text, comma, sigma_text = arguments.partition(",")
        try:
            size = tuple(int(part) for part in size_text.lower().split("x"))
            sigma = float(sigma_text) if comma else 0.5
        except ValueError:
            raise ConfigError(f"cannot read filter {text!r}; write gaussian:SIZE,SIGMA, e.g. gaussian:15,4") from None
        if len(size) == 1:
            size = size * 2
        if len(size) != 2:
            raise ConfigError(f"Gaussian size in {text!r} must be N or RxC, e.g. gaussian:15,4 or gaussian:15x9,4")
    return f"gaussian {size[0]}x{size[1]} sigma {sigma:g}", gaussian_kernel(size, sigma)


def _parse_kernel_rows(text: str) -> np.ndarray:
    body = text.partition(":")[2]
    try:
        rows = [[float(value) for value in row.split(",")] for row in body.split(";") if row.strip()]
    except ValueError:
        raise ConfigError(f"cannot read numbers in {text!r}; write e.g. 'kernel:1,0,-1;2,0,-2;1,0,-1'") from None
    if not rows or len({len(row) for row in rows}) != 1:
        raise ConfigError(
            f"kernel {text!r} is not a rectangle of numbers: every ';'-separated row needs the same count "
            "of ','-separated values, e.g. 'kernel:1,0,-1;2,0,-2;1,0,-1'"
        )
    return np.array(rows, dtype=np.float64)


def _read_kernel_file(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npy":
            return np.asarray(np.load(path, allow_pickle=False), dtype=np.float64)
        text = path.read_text().replace(",", " ")
        return np.loadtxt(io.StringIO(text), dtype=np.float64, ndmin=2)
    except FileNotFoundError:
        raise DataError(f"kernel file {path} not found; give an existing .npy or .txt file") from None
    except (OSError, ValueError) as error:
        raise DataError(
            f"cannot read kernel file {path} ({error}); save a 2-D array with numpy.save (.npy) or as text, "
            "one row per line"
        ) from None


def _shape_text(array: np.ndarray) -> str:
    return "x".join(str(size) for size in array.shape)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as float64: HxW for grey images, HxWx3 (RGB) for everything else."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file {path} not found; pass the path of a PNG, JPEG or other image file")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I", "I;16", "F", "L"):
                return np.asarray(image, dtype=np.float64)
            if image.mode in ("1", "LA"):
                return np.asarray(image.convert("L"), dtype=np.float64)
            return np.asarray(image.convert("RGB"), dtype=np.float64)
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(
            f"cannot read {path} as an image ({error}); pass a PNG, JPEG or other file Pillow can open"
        ) from None


def load_ascent() -> np.ndarray:
    """The lab's test picture, ``scipy.datasets.ascent()`` (512x512 grey), as float64.

    scipy.datasets fixes its download cache (from $XDG_CACHE_HOME) when first imported, so it is
    imported here, at call time, not when cnnlab is imported.
    """
    import pooch

    cached = Path(pooch.os_cache("scipy-data")) / "ascent.dat"
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel("WARNING")  # pooch's "Downloading ..." note would precede our one-line error offline
    try:
        from scipy import datasets

        return np.asarray(datasets.ascent(), dtype=np.float64)
    except (ImportError, OSError, ValueError) as error:
        raise DataError(
            f"cannot load scipy's ascent image: it is not in the cache ({cached}) and fetching it failed "
            f"({type(error).__name__}); {ASCENT_HELP}, or copy ascent.dat to {cached}"
        ) from None
    finally:
        logger.setLevel(level)


def output_shape(image_shape: tuple[int, ...], kernel_shape: tuple[int, ...], mode: str) -> tuple[int, ...]:
    """The shape ``convolve`` returns: per image axis of size n and kernel size k,
    full n+k-1, same n, valid n-k+1; a colour image's channel count is kept.

    Raises the same errors ``convolve`` would, so a shape it returns is one ``convolve`` can produce.
    """
    image_shape, kernel_shape = tuple(image_shape), tuple(kernel_shape)
    if len(image_shape) not in (2, 3) or min(image_shape, default=0) < 1:
        raise DataError(f"image shape {image_shape} is not HxW (grey) or HxWxC (colour) with every size at least 1")
    _check_kernel_shape(kernel_shape)
    _check_mode(image_shape[:2], kernel_shape, mode)
    height, width = image_shape[:2]
    rows, cols = kernel_shape
    if mode == "full":
        spatial = (height + rows - 1, width + cols - 1)
    elif mode == "same":
        spatial = (height, width)
    else:
        spatial = (height - rows + 1, width - cols + 1)
    return spatial + image_shape[2:]


def _check_kernel_shape(kernel_shape: tuple[int, ...]) -> None:
    if len(kernel_shape) != 2:
        raise DataError(
            f"kernel must be 2-D (rows x columns), got shape {kernel_shape}; a colour image gets the same "
            "2-D kernel on each channel. For a multi-channel kernel such as 7x7x3 use conv_layer_response"
        )
    if min(kernel_shape) < 1:
        raise DataError(f"kernel shape {kernel_shape} is empty; give at least one value")


def _check_mode(image_hw: tuple[int, int], kernel_shape: tuple[int, int], mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"unknown convolution mode {mode!r}; use one of {', '.join(MODES)}")
    rows, cols = kernel_shape
    if mode == "same" and (rows % 2 == 0 or cols % 2 == 0):
        raise ConfigError(
            f"a {rows}x{cols} kernel has no centre pixel, so mode 'same' is ambiguous: scipy would centre it "
            f"on element ({(rows - 1) // 2}, {(cols - 1) // 2}) (0-based, the upper-left of the middle), "
            "shifting the output half a pixel; pad the kernel to an odd size with a row/column of zeros, "
            "or use mode 'full' or 'valid'"
        )
    if mode == "valid" and (rows > image_hw[0] or cols > image_hw[1]):
        raise ConfigError(
            f"a {rows}x{cols} kernel does not fit inside the {image_hw[0]}x{image_hw[1]} image, so mode 'valid' "
            "has no output; use mode 'full' or 'same', a smaller kernel or a larger image"
        )


def _as_image(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image, dtype=np.float64)
    if array.ndim not in (2, 3) or array.size == 0:
        raise DataError(f"image must be a non-empty HxW or HxWxC array, got shape {array.shape}")
    return array


def _as_kernel(kernel: np.ndarray) -> np.ndarray:
    array = np.asarray(kernel, dtype=np.float64)
    _check_kernel_shape(array.shape)
    if not np.isfinite(array).all():
        raise DataError("kernel contains NaN or infinite values; give finite numbers")
    return array


def convolve(image: np.ndarray, kernel: np.ndarray, mode: str) -> np.ndarray:
    """True 2-D convolution (``scipy.signal.convolve2d``, zero padding) of a grey image, or of each
    channel of an HxWxC image with the same 2-D kernel. Integer images are converted to float64 first
    so sums cannot overflow."""
    image, kernel = _as_image(image), _as_kernel(kernel)
    _check_mode(image.shape[:2], kernel.shape, mode)
    if image.ndim == 2:
        return signal.convolve2d(image, kernel, mode=mode)
    channels = [signal.convolve2d(image[:, :, c], kernel, mode=mode) for c in range(image.shape[2])]
    return np.stack(channels, axis=-1)


def conv_layer_response(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """What a PyTorch ``Conv2d`` layer (no padding, no bias, float64) computes for one image.

    Shapes follow Keras (channels last): image HxW or HxWxC; kernel kh x kw, kh x kw x C (one filter
    spanning every input channel) or kh x kw x C x F (F filters). Returns H' x W' x F, so one 7x7x3
    kernel on a colour image gives one output channel.
    """
    image = _as_image(image)
    if image.ndim == 2:
        image = image[:, :, None]
    weights = np.asarray(kernel, dtype=np.float64)
    if weights.ndim == 2:
        weights = weights[:, :, None]
    if weights.ndim == 3:
        weights = weights[:, :, :, None]
    if weights.ndim != 4 or weights.size == 0:
        raise DataError(f"kernel shape {np.shape(kernel)} is not kh x kw, kh x kw x C or kh x kw x C x F; e.g. 7x7x3")
    rows, cols, in_channels, filters = weights.shape
    if in_channels != image.shape[2]:
        raise DataError(
            f"the kernel spans {in_channels} channel(s) but the image has {image.shape[2]}; a CNN kernel covers "
            f"every input channel, so give a {rows}x{cols}x{image.shape[2]} kernel"
        )
    _check_mode(image.shape[:2], (rows, cols), "valid")
    import torch  # here, not at the top: torch takes seconds to import and only this function needs it

    layer = torch.nn.Conv2d(in_channels, filters, (rows, cols), bias=False, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weights.transpose(3, 2, 0, 1).copy()))
        batch = torch.from_numpy(image.transpose(2, 0, 1).copy()).unsqueeze(0)
        return layer(batch)[0].permute(1, 2, 0).numpy()


@dataclass(frozen=True)
class LayerComparison:
    """Largest differences between scipy's convolution and a Conv2d layer given the kernel as is or flipped."""

    difference_as_is: float
    difference_flipped: float
    tolerance: float

    @property
    def agrees_as_is(self) -> bool:
        return self.difference_as_is <= self.tolerance

    @property
    def agrees_flipped(self) -> bool:
        return self.difference_flipped <= self.tolerance

    def summary(self) -> str:
        numbers = (
            f"largest difference {self.difference_as_is:.3g} with the kernel as is, "
            f"{self.difference_flipped:.3g} with it flipped"
        )
        if self.agrees_flipped and not self.agrees_as_is:
            return (
                "The Conv2d layer matches scipy's convolution only after flipping the kernel 180 degrees "
                f"({numbers}): a CNN layer computes cross-correlation."
            )
        if self.agrees_flipped and self.agrees_as_is:
            return (
                f"Both agree ({numbers}) because this kernel equals its 180-degree rotation; "
                "try an asymmetric kernel such as Sobel X to see that a CNN layer computes cross-correlation."
            )
        return f"The layer and scipy disagree ({numbers}); this is unexpected for the same input."


def compare_with_cnn_layer(image: np.ndarray, kernel: np.ndarray = SOBEL_X) -> LayerComparison:
    """Apply one 2-D kernel to a grey image with scipy (mode 'valid') and with a Conv2d layer, as is
    and flipped, to show which operation the layer performs."""
    image, kernel = _as_image(image), _as_kernel(kernel)
    if image.ndim != 2:
        raise DataError(f"compare_with_cnn_layer needs a grey HxW image, got shape {image.shape}; pass one channel")
    reference = convolve(image, kernel, "valid")
    as_is = conv_layer_response(image, kernel)[:, :, 0]
    flipped = conv_layer_response(image, kernel[::-1, ::-1])[:, :, 0]
    return LayerComparison(
        difference_as_is=float(np.abs(as_is - reference).max()),
        difference_flipped=float(np.abs(flipped - reference).max()),
        tolerance=1e-9 * max(1.0, float(np.abs(reference).max())),
    )


def plot_responses(image: np.ndarray, responses: Mapping[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Save the original and each filter response (absolute values; grey colormap for grey images) as a PNG.

    Absolute values because edge filters give negative responses as strong as positive ones.
    """
    from matplotlib.figure import Figure

    from cnnlab.plots import save_figure

    panels = [("original", np.asarray(image, dtype=np.float64), False)]
    panels += [(name, np.abs(response), True) for name, response in responses.items()]
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    aspect = min(2.0, max(0.33, panels[0][1].shape[0] / panels[0][1].shape[1]))  # height / width
    figure = Figure(figsize=(4.5 * columns, (4.5 * aspect + 0.4) * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis, (title, data, is_response) in zip(axes, panels, strict=False):
        if data.ndim == 3:  # colour: RGB scaled to [0, 1] by its own maximum
            axis.imshow(data / data.max() if data.max() > 0 else data)
        else:
            axis.imshow(data, cmap="gray")
        axis.set_title(f"|{title}| {_shape_text(data)}" if is_response else f"{title} {_shape_text(data)}")
    for axis in axes:
        axis.set_axis_off()
    return save_figure(figure, path, dpi=100)
