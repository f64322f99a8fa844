"""The one image-loading path of cnnlab: open, convert to 8-bit RGB, resize, and decode many files at once.

`cnnlab classify`, image-folder data sets and the benchmarks all read images through here, so every
command converts grey, alpha, 16-bit, CMYK and palette images the same way and refuses the same bad files.

"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from cnnlab.core.errors import ConfigError, DataError

MAX_IMAGE_PIXELS = 64_000_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
RESIZE_MODES = ("stretch", "crop", "pad")
GRAYSCALE_NOTE = "colour converted to grayscale (1-channel images wanted)"
COLOR_MODES = ("rgb", "grayscale")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
_SERIAL_BELOW = 64  # fewer files than this decode faster in this process than through a pool
_CHUNK = 64  # files per pool task: large enough that pickling results costs little


def find_images(top: Path, ignored: list[Path] | None = None, loops: list[Path] | None = None) -> list[Path]:
    """Image files under ``top`` in walk order (folders and files sorted). Symlinked folders are followed once
    each: a link loop is cut and its folder added to ``loops``; other files go to ``ignored``."""
    images, visited = [], set()
    for current, folders, files in os.walk(top, followlinks=True):
        real = os.path.realpath(current)
        if real in visited:
            if loops is not None:
                loops.append(Path(current))
            folders[:] = []
            continue
        visited.add(real)
        folders.sort()
        for name in sorted(files):
            path = Path(current, name)
            if path.suffix.lower() in IMAGE_SUFFIXES:
                images.append(path)
            elif ignored is not None:
                ignored.append(path)
    return images


def open_image(
    path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS, *, draft_size: tuple[int, int] | None = None
) -> tuple[Image.Image, list[str]]:
    """Open an image as 8-bit RGB; return it with notes on any conversion (grey, alpha, 16-bit, CMYK, palette).

    Unreadable, truncated or oversized files raise DataError naming the file and the fix. The size limit
    is checked from the header, before any pixel is decoded; it replaces Pillow's warning, while Pillow's
    hard limit (twice ``Image.MAX_IMAGE_PIXELS``) still applies above it. ``draft_size`` (h, w) lets a
    JPEG decode at 1/2, 1/4 or 1/8 scale when that still covers the size wanted: several times faster.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the max_pixels check decides
            image = Image.open(path)
            try:
                width, height = image.size
                if width * height > max_pixels:
                    raise DataError(_too_big(path, width, height, max_pixels))
                if draft_size is not None and image.format == "JPEG":
                    image.draft(None, (draft_size[1], draft_size[0]))
                image.load()
            except BaseException:
                image.close()
                raise
        return _detached(image)
    except DataError:
        raise
    except Image.DecompressionBombError as error:
        raise DataError(f"{path}: {error}; shrink the image below {max_pixels:,} pixels first") from error
    except FileNotFoundError as error:
        raise DataError(f"{path}: no such file; check the path") from error
    except IsADirectoryError as error:
        raise DataError(f"{path} is a folder; pass image files (e.g. {path}/*.jpg)") from error
    except UnidentifiedImageError as error:
        raise DataError(f"{path} is not an image Pillow can read; pass a JPEG, PNG, BMP, GIF, TIFF or WebP") from error
    except (OSError, SyntaxError, ValueError) as error:  # Pillow reports damaged data as any of these
        raise DataError(
            f"{path}: the image data is damaged or cut short ({error}); export or download it again"
        ) from error


def _detached(image: Image.Image) -> tuple[Image.Image, list[str]]:
    """Convert to RGB and close the file. Pillow closes single-frame files after loading; multi-frame ones
    (GIF, TIFF, APNG) stay open for seeking, so an RGB one is copied first (copying every image costs ~10%)."""
    rgb, notes = _to_rgb(image)
    if rgb is image and not getattr(image, "_close_exclusive_fp_after_loading", False):
        rgb = image.copy()
    if rgb is not image:
        image.close()
    return rgb, notes


def _too_big(path: str | os.PathLike, width: int, height: int, max_pixels: int) -> str:
    return (
        f"{path} is {width} x {height} = {width * height:,} pixels, over the limit of {max_pixels:,}; "
        "shrink it first or raise the limit (--max-pixels / max_pixels=)"
    )


def _to_rgb(image: Image.Image) -> tuple[Image.Image, list[str]]:
    mode = image.mode
    if mode == "RGB":
        return image, []
    if mode in _SIXTEEN_BIT_MODES:
        scaled = np.clip(np.asarray(image, dtype=np.float64) / 257.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(scaled).convert("RGB"), [f"16-bit grayscale ({mode}): scaled to 8 bits, grey to RGB"]
    if mode == "F":
        clipped = np.clip(np.asarray(image, dtype=np.float64), 0, 255).round().astype(np.uint8)
        return Image.fromarray(clipped).convert("RGB"), ["32-bit float grayscale: clipped to 0-255, grey to RGB"]
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB"), [
            f"{mode} with transparency: composited onto white, alpha dropped"
        ]
    if mode in ("L", "1"):
        return image.convert("RGB"), [f"grayscale ({mode}): grey copied to R, G and B"]
    return image.convert("RGB"), [f"{mode} image converted to RGB"]


def resize_image(image: Image.Image, size: tuple[int, int], resize: str = "stretch") -> Image.Image:
    """Resize to (h, w): ``stretch`` is the lab's plain resize (wide photos get squashed); ``crop`` first cuts
    the largest centred window of the target's aspect ratio, like Keras' ``crop_to_aspect_ratio``; ``pad``
    first pads with black, centred, to the target's aspect ratio, like Keras 3's ``pad_to_aspect_ratio``."""
    if resize not in RESIZE_MODES:
        raise ConfigError(f"resize mode {resize!r} is not one of {RESIZE_MODES}")
    height, width = size
    if image.size == (width, height):
        return image
    box = None
    source_width, source_height = image.size
    if resize == "crop":
        crop_width = min(source_width, source_height * width / height)
        crop_height = min(source_height, source_width * height / width)
        left, top = (source_width - crop_width) / 2, (source_height - crop_height) / 2
        box = (left, top, left + crop_width, top + crop_height)
    elif resize == "pad":
        pad_width = max(source_width, round(source_height * width / height))
        pad_height = max(source_height, round(source_width * height / width))
        if (pad_width, pad_height) != image.size:
            padded = Image.new(image.mode, (pad_width, pad_height))  # black
            padded.paste(image, ((pad_width - source_width) // 2, (pad_height - source_height) // 2))
            image = padded
    return image.resize((width, height), Image.Resampling.BILINEAR, box=box)


def _check_modes(resize: str, color_mode: str) -> None:
    if resize not in RESIZE_MODES:
        raise ConfigError(f"resize mode {resize!r} is not one of {RESIZE_MODES}")
    if color_mode not in COLOR_MODES:
        raise ConfigError(f"color_mode {color_mode!r} is not one of {COLOR_MODES}")


def load_image(
    path: str | os.PathLike,
    size: tuple[int, int] | None = None,
    resize: str = "stretch",
    color_mode: str = "rgb",
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> tuple[np.ndarray, list[str]]:
    """One image as a uint8 array (h, w, 3), or (h, w, 1) for ``color_mode="grayscale"``, with conversion notes.

    ``size`` (h, w) resizes (see ``resize_image``); None keeps the image's own size.
    """
    _check_modes(resize, color_mode)
    image, notes = open_image(path, max_pixels, draft_size=size)
    if size is not None:
        image = resize_image(image, size, resize)
    if color_mode == "grayscale":
        grey = np.asarray(image.convert("L"), dtype=np.uint8)[..., None]
        if not any("grey" in note for note in notes):  # a colour image: say it lost its colours
            notes = [*notes, GRAYSCALE_NOTE]
        return grey, notes
    return np.asarray(image, dtype=np.uint8), notes


def decode_batch(
    paths: Sequence[str], size: tuple[int, int], resize: str, color_mode: str, max_pixels: int
) -> tuple[np.ndarray, list[str | None], list[str]]:
    """Decode files into one array; a bad file leaves zeros and its error in the matching slot. The one
    per-file path of load_images' pool and of streamed batches, so both give the same pixels."""
    channels = 1 if color_mode == "grayscale" else 3
    images = np.zeros((len(paths), *size, channels), dtype=np.uint8)
    errors: list[str | None] = []
    notes: list[str] = []
    for index, path in enumerate(paths):
        try:
            images[index], image_notes = load_image(path, size, resize, color_mode, max_pixels)
            notes.extend(image_notes)
            errors.append(None)
        except DataError as error:
            errors.append(str(error))
    return images, errors, notes


def load_images(
    paths: Sequence[str | os.PathLike],
    size: tuple[int, int],
    resize: str = "stretch",
    color_mode: str = "rgb",
    strict: bool = False,
    progress: bool = True,
    max_pixels: int = MAX_IMAGE_PIXELS,
    workers: int | None = None,
) -> tuple[np.ndarray, list[Path], list[tuple[Path, str]], Counter]:
    """Decode many images into one uint8 array (N, h, w, c) on all free cores, with a progress bar.

    Returns the array, the paths kept (in order), the files skipped as ``(path, reason)`` and a Counter
    of conversion notes. A damaged file is skipped unless ``strict``, which raises its DataError instead.
    """
    _check_modes(resize, color_mode)
    files = [Path(path) for path in paths]
    names = [str(path) for path in files]  # the workers get strings: smaller to pickle than Path objects
    if workers is None:
        from cnnlab.core.runtime import available_cores

        workers = available_cores()
    chunks = [names[start : start + _CHUNK] for start in range(0, len(names), _CHUNK)]
    args = (size, resize, color_mode, max_pixels)
    bar = tqdm(total=len(names), unit="img", desc="decoding images", disable=not progress, leave=False)
    parts = []
    with bar:
        if workers <= 1 or len(names) < _SERIAL_BELOW:
            results = (decode_batch(chunk, *args) for chunk in chunks)
            parts = _collect(results, chunks, strict, bar)
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
                futures = [pool.submit(decode_batch, chunk, *args) for chunk in chunks]
                parts = _collect((future.result() for future in futures), chunks, strict, bar)
    return _assemble(parts, files, size, color_mode)


def _collect(results, chunks, strict: bool, bar) -> list:
    parts = []
    for chunk, (images, errors, notes) in zip(chunks, results, strict=False):
        if strict and (reason := next((error for error in errors if error), None)):
            raise DataError(f"{reason} (strict mode: remove or fix the file, or load without --strict)")
        parts.append((chunk, images, errors, notes))
        bar.update(len(chunk))
    return parts


def _assemble(parts: list, files: list[Path], size: tuple[int, int], color_mode: str):
    """One array of the decoded images and the caller's paths of the kept files. A chunk without a bad file
    is copied whole and no path is rebuilt: on 32x32 PNGs that took one-worker loading from 0.83x to 0.94x
    of a plain Pillow loop (benchmarks/folder_speed.py, README)."""
    channels = 1 if color_mode == "grayscale" else 3
    kept, skipped, notes = [], [], Counter()
    total = sum(len(errors) - errors.count(None) for _, _, errors, _ in parts)
    images = np.empty((sum(len(chunk) for chunk, *_ in parts) - total, *size, channels), dtype=np.uint8)
    position, start = 0, 0
    for chunk, chunk_images, errors, chunk_notes in parts:
        bad = [index for index, error in enumerate(errors) if error is not None]
        good = chunk_images if not bad else np.delete(chunk_images, bad, axis=0)
        images[position : position + len(good)] = good
        position += len(good)
        chunk_files = files[start : start + len(chunk)]
        kept.extend(path for path, error in zip(chunk_files, errors, strict=True) if error is None)
        skipped.extend((chunk_files[index], errors[index]) for index in bad)
        notes.update(chunk_notes)
        start += len(chunk)
    return images, kept, skipped, notes
