"""Convolution filters, output shapes, the CNN-layer comparison and `cnnlab convolve`."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import signal

from cnnlab.cli import main
from cnnlab.convolution import (
    SOBEL_X,
    SOBEL_Y,
    compare_with_cnn_layer,
    conv_layer_response,
    convolve,
    gaussian_kernel,
    kernel_from_spec,
    load_ascent,
    load_image,
    output_shape,
)
from cnnlab.core.errors import ConfigError, DataError
from cnnlab.core.runtime import configure_threads

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    configure_threads()


def test_gaussian_matches_fspecial_computed_by_hand():
    # 3x3, sigma 0.5: exp(-(x^2+y^2)/(2*0.25)) is 1 at the centre, e^-2 on the edges, e^-4 in the corners.
    centre, edge, corner = 1.0, math.exp(-2), math.exp(-4)
    total = centre + 4 * edge + 4 * corner
    expected = np.array([[corner, edge, corner], [edge, centre, edge], [corner, edge, corner]]) / total
    kernel = gaussian_kernel((3, 3), 0.5)
    np.testing.assert_allclose(kernel, expected, rtol=1e-12)
    # The values MATLAB prints for fspecial('gaussian', 3, 0.5).
    np.testing.assert_allclose(kernel[0], [0.0113, 0.0838, 0.0113], atol=5e-5)
    assert kernel[1, 1] == pytest.approx(0.6193, abs=5e-5)


def test_gaussian_zeroes_values_below_eps_times_max():
    kernel = gaussian_kernel((15, 15), 0.5)  # the corners are exp(-196), far below eps
    assert kernel[0, 0] == 0.0
    assert kernel.sum() == pytest.approx(1.0)
    wide = gaussian_kernel((3, 5), 1.0)
    assert wide.shape == (3, 5)
    np.testing.assert_allclose(wide, wide[::-1, ::-1])
    assert wide[1, 2] == wide.max()


def test_gaussian_rejects_bad_sigma_and_shape():
    with pytest.raises(ConfigError, match="sigma"):
        gaussian_kernel((3, 3), 0)
    with pytest.raises(ConfigError, match="shape"):
        gaussian_kernel((0, 3), 1)


def test_sobel_kernels_find_vertical_and_horizontal_edges():
    np.testing.assert_array_equal(SOBEL_X, [[1, 0, -1], [2, 0, -2], [1, 0, -1]])
    np.testing.assert_array_equal(SOBEL_Y, [[1, 2, 1], [0, 0, 0], [-1, -2, -1]])
    assert not SOBEL_X.flags.writeable
    vertical_edge = np.zeros((8, 8))
    vertical_edge[:, 4:] = 1.0
    assert np.abs(convolve(vertical_edge, SOBEL_X, "valid")).max() == 4.0
    assert np.abs(convolve(vertical_edge, SOBEL_Y, "valid")).max() == 0.0
    assert np.abs(convolve(vertical_edge.T, SOBEL_Y, "valid")).max() == 4.0


def test_kernel_specs(tmp_path):
    name, kernel = kernel_from_spec("gaussian:15,4")
    assert name == "gaussian 15x15 sigma 4"
    np.testing.assert_array_equal(kernel, gaussian_kernel((15, 15), 4))
    assert kernel_from_spec("gaussian:5x3,1")[1].shape == (5, 3)
    assert kernel_from_spec("Sobel-Y")[0] == "sobel-y"
    name, kernel = kernel_from_spec("kernel:1,0,-1;2,0,-2;1,0,-1")
    assert name == "kernel 3x3"
    np.testing.assert_array_equal(kernel, SOBEL_X)
    np.save(tmp_path / "k.npy", np.ones((2, 5)))
    assert kernel_from_spec(str(tmp_path / "k.npy"))[1].shape == (2, 5)
    (tmp_path / "k.txt").write_text("1, 2, 1\n0 0 0\n-1 -2 -1\n")
    np.testing.assert_array_equal(kernel_from_spec(str(tmp_path / "k.txt"))[1], SOBEL_Y)


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("laplace", ConfigError, "unknown filter"),
        ("kernel:1,2;3", ConfigError, "rectangle"),
        ("kernel:1,a", ConfigError, "numbers"),
        ("gaussian:big,4", ConfigError, "gaussian:SIZE,SIGMA"),
        ("missing.npy", DataError, "not found"),
    ],
)
def test_kernel_spec_errors(spec, error, match):
    with pytest.raises(error, match=match):
        kernel_from_spec(spec)


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 12),
    width=st.integers(1, 12),
    channels=st.sampled_from([None, 1, 3]),
    rows=st.integers(1, 7),
    cols=st.integers(1, 7),
    mode=st.sampled_from(["full", "same", "valid"]),
)
def test_output_shape_matches_scipy(height, width, channels, rows, cols, mode):
    image_shape = (height, width) if channels is None else (height, width, channels)
    image = np.random.default_rng(0).random(image_shape)
    kernel = np.arange(1.0, rows * cols + 1).reshape(rows, cols)
    even_same = mode == "same" and (rows % 2 == 0 or cols % 2 == 0)
    too_big_valid = mode == "valid" and (rows > height or cols > width)
    if even_same or too_big_valid:
        with pytest.raises(ConfigError):
            output_shape(image_shape, kernel.shape, mode)
        with pytest.raises(ConfigError):
            convolve(image, kernel, mode)
        return
    plane = image if channels is None else image[:, :, 0]
    scipy_shape = signal.convolve2d(plane, kernel, mode=mode).shape + image_shape[2:]
    result = convolve(image, kernel, mode)
    assert output_shape(image_shape, kernel.shape, mode) == scipy_shape == result.shape


def test_colour_image_is_convolved_channel_by_channel():
    image = np.random.default_rng(1).integers(0, 256, (9, 11, 3)).astype(np.uint8)
    result = convolve(image, SOBEL_X, "same")
    for channel in range(3):
        np.testing.assert_array_equal(
            result[:, :, channel], signal.convolve2d(image[:, :, channel] * 1.0, SOBEL_X, "same")
        )


@pytest.mark.parametrize(
    ("image", "kernel", "mode", "error", "match"),
    [
        (np.ones((8, 8)), np.ones((3, 3, 3)), "same", DataError, "2-D"),
        (np.ones((8, 8)), np.ones(3), "full", DataError, "2-D"),
        (np.ones((8, 8)), np.ones((4, 3)), "same", ConfigError, r"centre it on element \(1, 1\)"),
        (np.ones((8, 8)), np.ones((3, 3)), "circular", ConfigError, "unknown convolution mode"),
        (np.ones((5, 5)), np.ones((7, 3)), "valid", ConfigError, "does not fit"),
        (np.ones((2, 2, 2, 2)), np.ones((3, 3)), "full", DataError, "HxW"),
    ],
)
def test_convolve_rejects_bad_input(image, kernel, mode, error, match):
    with pytest.raises(error, match=match):
        convolve(image, kernel, mode)


def test_load_image_errors(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="cannot read .*broken.png as an image"):
        load_image(broken)
    with pytest.raises(DataError, match="not found"):
        load_image(tmp_path / "absent.jpg")


def test_load_image_reads_grey_and_colour(tmp_path, photos_dir):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(load_image(tmp_path / "grey.png"), grey)
    photo = load_image(photos_dir / "chelsea.png")
    assert photo.ndim == 3 and photo.shape[2] == 3 and photo.max() <= 255


def test_cnn_layer_agrees_with_scipy_only_after_flipping():
    image = np.random.default_rng(2).random((16, 20))
    comparison = compare_with_cnn_layer(image, SOBEL_X)
    assert comparison.agrees_flipped and not comparison.agrees_as_is
    assert comparison.difference_as_is > 1.0
    assert "only after flipping" in comparison.summary()
    symmetric = compare_with_cnn_layer(image, gaussian_kernel((5, 5), 1.0))
    assert symmetric.agrees_as_is and symmetric.agrees_flipped
    assert "180-degree rotation" in symmetric.summary()


def test_one_7x7x3_kernel_gives_one_output_channel():
    rng = np.random.default_rng(3)
    image, kernel = rng.random((20, 24, 3)), rng.standard_normal((7, 7, 3))
    response = conv_layer_response(image, kernel)
    assert response.shape == (14, 18, 1)
    # Cross-correlation summed over the input channels: what one filter of a CNN layer computes.
    expected = sum(signal.correlate2d(image[:, :, c], kernel[:, :, c], mode="valid") for c in range(3))
    np.testing.assert_allclose(response[:, :, 0], expected, rtol=1e-12)
    assert conv_layer_response(image, rng.random((3, 3, 3, 5))).shape == (18, 22, 5)
    with pytest.raises(DataError, match="7x7x3 kernel"):
        conv_layer_response(image, kernel[:, :, :2])


def test_ascent_is_read_from_the_seeded_cache(scipy_ascent):
    image = load_ascent()
    assert image.shape == (512, 512)
    assert image.max() == 255


def test_ascent_offline_error_and_cache_path_read_at_call_time(tmp_path):
    """Importing cnnlab must not fix scipy's cache path; without the file and network the error says what to do."""
    empty_cache = tmp_path / "empty-cache"
    code = (
        "import os, sys\n"
        "import cnnlab.cli.convolve\n"
        "assert 'scipy.datasets' not in sys.modules, 'scipy.datasets imported too early'\n"
        f"os.environ['XDG_CACHE_HOME'] = {str(empty_cache)!r}\n"
        "from cnnlab.convolution import load_ascent\n"
        "from cnnlab.core.errors import DataError\n"
        "try:\n    load_ascent()\nexcept DataError as error:\n    print(error)\n"
    )
    closed_port = "http://127.0.0.1:9"  # nothing listens there, so any download fails at once
    env = {**os.environ, "HTTPS_PROXY": closed_port, "https_proxy": closed_port, "NO_PROXY": "", "no_proxy": ""}
    env.pop("XDG_CACHE_HOME", None)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "pass an IMAGE path" in result.stdout
    assert "Downloading" not in result.stderr  # the CLI's error stays one line
    assert str(empty_cache / "scipy-data" / "ascent.dat") in result.stdout


def test_cli_on_ascent_prints_the_lab_shapes(scipy_ascent, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        main(
            [
                "convolve",
                "--filter",
                "gaussian:15,4",
                "--filter",
                "sobel-x",
                "--filter",
                "sobel-y",
                "--mode",
                "same",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    rows = {line.split("  ")[0]: line for line in printed.splitlines()}
    for name in ("gaussian 15x15 sigma 4", "sobel-x", "sobel-y"):
        cells = [cell.strip() for cell in rows[name].split("  ") if cell.strip()]
        big = name.startswith("gaussian")
        assert cells[2:] == (
            ["(526, 526)", "(512, 512)", "(498, 498)"] if big else ["(514, 514)", "(512, 512)", "(510, 510)"]
        )
    figure = out / "convolution-same.png"
    assert str(figure) in printed
    assert figure.read_bytes().startswith(b"\x89PNG")
    assert [path.name for path in out.iterdir()] == ["convolution-same.png"]  # no temporary file left


def test_cli_on_a_colour_photo_with_a_custom_kernel_file(photos_dir, tmp_path, capsys):
    kernel_file = tmp_path / "edge.txt"
    kernel_file.write_text("0 1 0\n1 -4 1\n0 1 0\n")
    out = tmp_path / "out"
    code = main(
        [
            "convolve",
            str(photos_dir / "chelsea.png"),
            "--filter",
            str(kernel_file),
            "--filter",
            "kernel:1,2;3,4",
            "--mode",
            "full",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    height, width, _ = load_image(photos_dir / "chelsea.png").shape
    assert f"({height + 2}, {width + 2}, 3)" in printed
    assert "n/a: even kernel" in printed
    assert (out / "convolution-full.png").is_file()


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--filter", "sobel-x", "--mode", "same", "BROKEN"], "cannot read .* as an image"),
        (["--filter", "kernel:1,2;3,4", "--mode", "same", "SMALL"], "no centre pixel"),
        (["--filter", "gaussian:15,4", "--mode", "valid", "SMALL"], "does not fit"),
        (["--filter", "CUBE", "SMALL"], "must be 2-D"),
    ],
)
def test_cli_errors_are_one_line(extra, match, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(small)
    np.save(tmp_path / "cube.npy", np.ones((3, 3, 3)))
    names = {"BROKEN": str(broken), "SMALL": str(small), "CUBE": str(tmp_path / "cube.npy")}
    argv = ["convolve", "--out", str(tmp_path / "out"), *(names.get(arg, arg) for arg in extra)]
    assert main(argv) == 2
    error_lines = capsys.readouterr().err.strip().splitlines()
    assert len(error_lines) == 1
    assert error_lines[0].startswith("cnnlab convolve: error: ")
    assert re.search(match, error_lines[0])


def test_cli_rejects_unknown_mode(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["convolve", "--mode", "circular"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'circular'" in capsys.readouterr().err
