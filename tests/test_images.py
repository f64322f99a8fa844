"""The one image-loading path: conversions to RGB, resizing, JPEG draft decoding and the process pool."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cnnlab.core.errors import ConfigError, DataError
from cnnlab.data.images import load_image, load_images, open_image, resize_image


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture
def odd_modes(tmp_path):
    """One file per unusual mode: CMYK JPEG, palette PNG with and without transparency, LA, 16-bit grey."""
    files = {}
    rgb = Image.fromarray(_noise(16, 16))
    files["cmyk"] = tmp_path / "cmyk.jpg"
    rgb.convert("CMYK").save(files["cmyk"])
    files["palette"] = tmp_path / "palette.png"
    rgb.convert("P").save(files["palette"])
    files["palette_alpha"] = tmp_path / "palette_alpha.png"
    rgb.convert("P").save(files["palette_alpha"], transparency=0)
    files["la"] = tmp_path / "la.png"
    Image.fromarray(np.full((16, 16, 2), 128, np.uint8), "LA").save(files["la"])
    files["sixteen"] = tmp_path / "sixteen.png"
    Image.fromarray(np.full((16, 16), 65535, np.uint16)).save(files["sixteen"])
    return files


@pytest.mark.parametrize(
    ("kind", "note"),
    [
        ("cmyk", "CMYK image converted to RGB"),
        ("palette", "P image converted to RGB"),
        ("palette_alpha", "P with transparency"),
        ("la", "LA with transparency"),
        ("sixteen", "16-bit grayscale"),
    ],
)
def test_unusual_modes_become_rgb_with_a_note(odd_modes, kind, note):
    image, notes = open_image(odd_modes[kind])
    assert image.mode == "RGB" and image.size == (16, 16)
    assert len(notes) == 1 and note in notes[0]


def test_sixteen_bit_white_stays_white(odd_modes):
    array, _ = load_image(odd_modes["sixteen"])
    assert array.dtype == np.uint8 and array.shape == (16, 16, 3) and array.min() == 255


def test_rgb_file_is_read_exactly_without_notes(tmp_path):
    pixels = _noise(20, 30)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    array, notes = load_image(tmp_path / "a.png")
    np.testing.assert_array_equal(array, pixels)
    assert notes == []


def test_crop_keeps_the_aspect_ratio_and_stretch_squashes():
    # Left half red, right half blue, 200 x 100: a square crop keeps only the middle, where both meet.
    pixels = np.zeros((100, 200, 3), np.uint8)
    pixels[:, :100, 0] = 255
    pixels[:, 100:, 2] = 255
    image = Image.fromarray(pixels)
    cropped = np.asarray(resize_image(image, (50, 50), "crop"))
    stretched = np.asarray(resize_image(image, (50, 50), "stretch"))
    assert cropped.shape == stretched.shape == (50, 50, 3)
    assert cropped[:, :20, 0].min() == 255 and cropped[:, -20:, 2].min() == 255  # centre square: half each
    wide = np.asarray(resize_image(image, (10, 40), "crop"))  # 4:1 window from a 2:1 image: top and bottom cut
    assert wide.shape == (10, 40, 3) and wide[:, :15, 0].min() == 255
    with pytest.raises(ConfigError, match="resize mode"):
        resize_image(image, (8, 8), "squash")


def test_grayscale_mode_gives_one_channel(tmp_path):
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(tmp_path / "grey.png")
    array, _ = load_image(tmp_path / "grey.png", (4, 6), color_mode="grayscale")
    assert array.shape == (4, 6, 1) and (array == 90).all()
    with pytest.raises(ConfigError, match="color_mode"):
        load_image(tmp_path / "grey.png", color_mode="cmyk")


def test_big_jpeg_decodes_in_draft_mode_at_a_fraction_of_its_size(tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(_noise(800, 800)).save(path, quality=90)
    drafted, _ = open_image(path, draft_size=(64, 64))
    assert drafted.size == (100, 100)  # 1/8 scale is the smallest that still covers 64 x 64
    full, _ = open_image(path)
    assert full.size == (800, 800)
    array, _ = load_image(path, (64, 64))
    assert array.shape == (64, 64, 3)


def test_pixel_limit_is_checked_from_the_header(tmp_path):
    Image.fromarray(_noise(40, 40)).save(tmp_path / "a.png")
    with pytest.raises(DataError, match="1,600 pixels, over the limit of 1,000"):
        load_image(tmp_path / "a.png", max_pixels=1_000)


def _folder_of_images(tmp_path, count: int):
    paths = []
    for index in range(count):
        path = tmp_path / f"{index:03d}.{'png' if index % 2 else 'jpg'}"
        Image.fromarray(_noise(24 + index % 5, 20, seed=index)).save(path)
        paths.append(path)
    return paths


def test_pool_and_single_process_give_the_same_array(tmp_path):
    paths = _folder_of_images(tmp_path, 150)  # over the serial threshold: three chunks on two workers
    pooled, kept, skipped, notes = load_images(paths, (16, 16), workers=2, progress=False)
    serial, *_ = load_images(paths, (16, 16), workers=1, progress=False)
    assert pooled.shape == (150, 16, 16, 3) and pooled.dtype == np.uint8
    np.testing.assert_array_equal(pooled, serial)
    assert kept == paths and skipped == [] and not notes


def test_damaged_files_are_skipped_and_counted_or_refused_when_strict(tmp_path):
    paths = _folder_of_images(tmp_path, 100)
    buffer = io.BytesIO()
    Image.fromarray(_noise(64, 64)).save(buffer, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[:700])
    (tmp_path / "text.png").write_text("not a picture")
    Image.fromarray(np.zeros((24, 20), np.uint8)).save(tmp_path / "grey.png")
    paths[10:10] = [tmp_path / "cut.jpg", tmp_path / "text.png", tmp_path / "grey.png"]
    images, kept, skipped, notes = load_images(paths, (8, 8), workers=2, progress=False)
    assert len(images) == len(kept) == 101
    assert [path.name for path, _ in skipped] == ["cut.jpg", "text.png"]
    assert "damaged or cut short" in skipped[0][1] and "not an image" in skipped[1][1]
    assert kept[10].name == "grey.png" and sum(notes.values()) == 1
    np.testing.assert_array_equal(images, load_images(kept, (8, 8), workers=1, progress=False)[0])  # rows match kept
    with pytest.raises(DataError, match="cut.jpg.*strict"):
        load_images(paths, (8, 8), strict=True, workers=2, progress=False)


@pytest.mark.parametrize("suffix", ["gif", "tif", "webp", "bmp"])
def test_other_formats_load_and_outlive_their_file(tmp_path, suffix):
    path = tmp_path / f"a.{suffix}"
    Image.fromarray(np.full((6, 7, 3), 200, np.uint8)).save(path)
    array, _ = load_image(path)
    path.unlink()  # the pixels were read in full: nothing still needs the file
    assert array.shape == (6, 7, 3) and abs(int(array[0, 0, 0]) - 200) <= 8
