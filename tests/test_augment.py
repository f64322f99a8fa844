"""Augmentation: Keras' ImageDataGenerator semantics, per-sample randomness, seeding, fit wiring, spec strings."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch

from cnnlab.core.errors import ConfigError, DataError
from cnnlab.core.runtime import configure_threads
from cnnlab.data.augment import Augmentation, affine_warp, augment_array, parse_augment_spec
from cnnlab.data.cifar import CLASS_NAMES
from cnnlab.models.cnn import build_cnn
from cnnlab.plots import augmentation_preview


@pytest.fixture(scope="module", autouse=True)
def _torch_threads_as_configured():
    configure_threads()  # $CNNLAB_THREADS: more threads than free cores make torch spin-wait


def _images(n=8, height=32, width=32, seed=0) -> torch.Tensor:
    """Smooth random NCHW images in [-1, 1] in channels_last memory, as fit hands them over."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(-1, 1, (n, height, width, 3)).cumsum(1).cumsum(2)
    noise /= np.abs(noise).max(axis=(1, 2, 3), keepdims=True)
    return torch.from_numpy(noise.astype(np.float32)).permute(0, 3, 1, 2)


def _keras_reference(image, theta, tx, ty, shear, zx, zy, mode, cval):
    """Keras' apply_affine_transform written out with numpy and scipy, on one HWC image."""
    t, s = np.deg2rad(theta), np.deg2rad(shear)
    rotation = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    shift = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
    skew = np.array([[1, -np.sin(s), 0], [0, np.cos(s), 0], [0, 0, 1]])
    zoom = np.array([[zx, 0, 0], [0, zy, 0], [0, 0, 1]])
    centre = image.shape[0] / 2 - 0.5  # Keras centres x on the height: square images only
    matrix = np.array([[1, 0, centre], [0, 1, centre], [0, 0, 1]]) @ rotation @ shift @ skew @ zoom
    matrix = matrix @ np.array([[1, 0, -centre], [0, 1, -centre], [0, 0, 1]])
    matrix[:, [0, 1]] = matrix[:, [1, 0]]  # (x, y) = (column, row) -> scipy's (row, column)
    matrix[[0, 1]] = matrix[[1, 0]]
    return np.stack(
        [
            scipy.ndimage.affine_transform(channel, matrix[:2, :2], matrix[:2, 2], order=1, mode=mode, cval=cval)
            for channel in np.moveaxis(image, 2, 0)
        ],
        2,
    )


@pytest.mark.parametrize("fill_mode", ["nearest", "constant", "reflect", "wrap"])
def test_affine_warp_matches_keras(fill_mode):
    # Keras centres non-square images wrongly, so this compares on a square one; the next test checks
    # on a non-square image that x is the column axis and y the row axis.
    image = _images(1, height=12, width=12, seed=3)[0].permute(1, 2, 0).numpy()
    params = {"theta": 17.0, "tx": 2.5, "ty": -1.7, "shear": 8.0, "zx": 0.9, "zy": 1.15}
    scipy_mode = "grid-wrap" if fill_mode == "wrap" else fill_mode  # see Augmentation's docstring
    expected = _keras_reference(image, **params, mode=scipy_mode, cval=-1.0)
    batch = torch.from_numpy(image).permute(2, 0, 1)[None]
    values = [torch.tensor([v]) for v in params.values()]
    warped = affine_warp(batch, *values, fill_mode=fill_mode, cval=0.0)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(warped, expected, atol=1e-5)


def test_affine_warp_shifts_along_the_named_axes():
    image = _images(1, height=10, width=14)
    one = torch.ones(1)
    zero = torch.zeros(1)
    right = affine_warp(image, zero, one, zero, zero, one, one, fill_mode="wrap")  # input x = output x + 1
    torch.testing.assert_close(right, torch.roll(image, -1, dims=3))
    down = affine_warp(image, zero, zero, 2 * one, zero, one, one, fill_mode="wrap")
    torch.testing.assert_close(down, torch.roll(image, -2, dims=2))
    filled = affine_warp(image, zero, 3 * one, zero, zero, one, one, fill_mode="constant", cval=255)
    assert torch.all(filled[..., -3:] == 1)  # cval 255 is white, +1 in [-1, 1]
    torch.testing.assert_close(filled[..., :-3], image[..., 3:])


@pytest.mark.parametrize("fill_mode", ["nearest", "constant", "reflect", "wrap"])
def test_flips_folded_into_the_warp_equal_flipping_afterwards_as_keras_does(fill_mode):
    images = _images(6, height=10, width=14)
    params = [torch.linspace(-20, 20, 6), torch.full((6,), 2.0), torch.full((6,), -1.0)]
    params += [torch.linspace(0, 10, 6), torch.full((6,), 0.9), torch.full((6,), 1.2)]
    flip_x = torch.tensor([True, False, True, False, True, False])
    flip_y = torch.tensor([True, True, False, False, True, True])
    folded = affine_warp(images, *params, fill_mode=fill_mode, cval=40, flip_x=flip_x, flip_y=flip_y)
    warped = affine_warp(images, *params, fill_mode=fill_mode, cval=40)
    warped = torch.where(flip_x.view(6, 1, 1, 1), warped.flip(3), warped)
    warped = torch.where(flip_y.view(6, 1, 1, 1), warped.flip(2), warped)
    torch.testing.assert_close(folded, warped, atol=1e-5, rtol=0)


def test_each_image_gets_its_own_random_parameters():
    same = _images(1).repeat(16, 1, 1, 1).contiguous(memory_format=torch.channels_last)
    out = Augmentation(rotation_range=30, width_shift_range=0.2, zoom_range=0.2, seed=1)(same)
    flat = out.flatten(1)
    distances = torch.cdist(flat, flat) + torch.eye(16) * 1e9
    assert distances.min() > 1e-3, "two images of the batch got the same transform"


def test_seed_makes_runs_repeatable_and_calls_continue_the_stream():
    images = _images()
    settings = {"rotation_range": 20, "width_shift_range": 0.1, "horizontal_flip": True, "brightness_range": (0.8, 1.2)}
    first, again = Augmentation(**settings, seed=5), Augmentation(**settings, seed=5)
    a1, a2 = first(images), first(images)
    torch.testing.assert_close(a1, again(images))
    torch.testing.assert_close(a2, again(images))
    assert not torch.allclose(a1, a2)
    assert not torch.allclose(a1, Augmentation(**settings, seed=6)(images))


def test_output_keeps_shape_dtype_layout_and_input():
    images = _images().contiguous(memory_format=torch.channels_last)
    before = images.clone()
    out = Augmentation(rotation_range=10, shear_range=5, vertical_flip=True, channel_shift_range=10)(images)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(images, before)
    assert out.min() >= -1 and out.max() <= 1


def test_no_settings_is_the_identity():
    images = _images()
    torch.testing.assert_close(Augmentation()(images), images)


def test_flips_mirror_about_half_the_images():
    images = _images(64)
    out = Augmentation(horizontal_flip=True)(images)
    mirrored = torch.tensor([torch.equal(o, i.flip(2)) for o, i in zip(out, images, strict=True)])
    unchanged = torch.tensor([torch.equal(o, i) for o, i in zip(out, images, strict=True)])
    assert torch.all(mirrored ^ unchanged)
    assert 16 < int(mirrored.sum()) < 48


def test_rot90_turns_each_image_a_whole_number_of_quarter_turns():
    images = _images(64)
    out = Augmentation(rot90=True, seed=2)(images)
    turns = []
    for o, i in zip(out, images, strict=True):
        matches = [k for k in range(4) if torch.equal(o, torch.rot90(i, k, dims=(1, 2)))]
        assert len(matches) == 1
        turns.append(matches[0])
    assert set(turns) == {0, 1, 2, 3}
    with pytest.raises(DataError, match="square"):
        Augmentation(rot90=True)(_images(2, height=8, width=10))


def test_brightness_multiplies_the_0_255_values_and_clips():
    images = _images()
    half = Augmentation(brightness_range=(0.5, 0.5))(images)
    torch.testing.assert_close(half, (images + 1) * 0.5 - 1)
    double = Augmentation(brightness_range=(2, 2))(images)
    torch.testing.assert_close(double, ((images + 1) * 2 - 1).clamp(max=1))


def test_channel_shift_adds_one_offset_per_image_within_its_range():
    images = _images(16) * 0.5  # leave head-room, so most pixels are not clipped
    out = Augmentation(channel_shift_range=40, seed=3)(images)
    for o, i in zip(out, images, strict=True):
        assert o.min() >= i.min() - 1e-6 and o.max() <= i.max() + 1e-6  # Keras clips to the image's range
        inside = (o > i.min() + 1e-4) & (o < i.max() - 1e-4)
        offsets = (o - i)[inside]
        assert offsets.abs().max() <= 40 / 127.5 + 1e-5
        torch.testing.assert_close(offsets, offsets.mean().expand_as(offsets), atol=1e-5, rtol=0)


def test_zoom_below_one_enlarges_about_the_centre():
    image = torch.zeros(1, 1, 9, 9)
    image[..., 3:6, 3:6] = 1  # a 3x3 square in the middle
    zoomed = Augmentation(zoom_range=(1 / 3, 1 / 3), fill_mode="constant")(image)
    assert torch.all(zoomed[..., 1:8, 1:8] > 0.5)  # it now covers 9x9 minus interpolated edges
    assert zoomed[0, 0, 4, 4] == 1


def test_fit_augments_every_training_batch_once_and_never_validation():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (50, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, 50)
    x_val, y_val = x[:13], y[:13]
    seen = []

    def spy(batch):
        seen.append((batch.shape, batch.is_contiguous(memory_format=torch.channels_last)))
        return Augmentation(rotation_range=10, horizontal_flip=True)(batch)

    model = build_cnn(n_conv_layers=1, n_filters=4, device="cpu")
    history = model.fit(x, y, batch_size=16, epochs=2, validation_data=(x_val, y_val), augment=spy, verbose=0)
    assert [shape[0] for shape, _ in seen] == [16, 16, 16, 2] * 2  # one epoch = one pass over the 50 images
    assert all(shape[1:] == (3, 32, 32) and channels_last for shape, channels_last in seen)
    assert np.isfinite(history.history["val_loss"]).all()


def test_augment_array_and_preview_figure(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(augment_array(Augmentation(), images), images)
    path = tmp_path / "preview.png"
    figure = augmentation_preview(
        images,
        Augmentation(rotation_range=20, seed=1),
        labels=[0, 1, 2],
        variants=4,
        path=path,
        class_names=CLASS_NAMES,
    )
    assert path.stat().st_size > 5_000
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert titles[:5] == ["original (airplane)", "augmented 1", "augmented 2", "augmented 3", "augmented 4"]
    assert len(titles) == 15


def test_augmentation_preview_scales_uint8_images_as_the_trainer_does():
    pixels = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    shown = {}
    for kind, images in (("uint8", pixels), ("scaled", pixels / 127.5 - 1)):
        figure = augmentation_preview(images, Augmentation(horizontal_flip=True, seed=0), count=2, variants=1)
        shown[kind] = [np.asarray(ax.images[0].get_array()) for ax in figure.axes if ax.images]
    for uint8_image, scaled_image in zip(shown["uint8"], shown["scaled"], strict=True):
        np.testing.assert_allclose(uint8_image, scaled_image, atol=1e-6)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"rotation_range": 400}, "rotation_range must be between 0 and 360"),
        ({"rotation_range": -5}, "rotation_range must be between 0 and 360"),
        ({"width_shift_range": -0.1}, "width_shift_range must be at least 0"),
        ({"height_shift_range": -2}, "height_shift_range must be at least 0"),
        ({"zoom_range": -0.2}, r"zoom_range must be in \[0, 1\)"),
        ({"zoom_range": 1.5}, r"zoom_range must be in \[0, 1\)"),
        ({"zoom_range": (0, 1.2)}, "factors must be above 0"),
        ({"zoom_range": (1.2, 0.8)}, "low bound 1.2 is above its high bound 0.8"),
        ({"brightness_range": (1.3, 0.7)}, "low bound 1.3 is above its high bound 0.7"),
        ({"brightness_range": 0.8}, r"brightness_range must be a \(low, high\) pair"),
        ({"brightness_range": (-0.5, 1)}, "0 or more"),
        ({"shear_range": 90}, "below 90"),
        ({"channel_shift_range": 300}, "between 0 and 255"),
        ({"fill_mode": "mirror"}, "unknown fill_mode 'mirror'"),
        ({"cval": -1}, "cval must be between 0 and 255"),
        ({"rotation_range": "15"}, "rotation_range must be a number"),
        ({"seed": -1}, "seed must be a non-negative integer"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(settings, message):
    with pytest.raises(ConfigError, match=message):
        Augmentation(**settings)


def test_non_batches_are_refused():
    with pytest.raises(DataError, match="float tensor of shape"):
        Augmentation()(torch.zeros(3, 32, 32))
    with pytest.raises(DataError, match="torch.uint8"):
        Augmentation()(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_spec_string_from_the_cli():
    augmentation = parse_augment_spec("rotation=15,shift=0.1,flip")
    assert augmentation.rotation_range == 15
    assert augmentation.width_shift_range == augmentation.height_shift_range == 0.1
    assert augmentation.horizontal_flip and not augmentation.vertical_flip
    full = parse_augment_spec(
        "zoom=0.8:1.2, brightness=0.7:1.3, fill=Reflect, channel_shift=20, vflip, rot90, flip=false, seed=4"
    )
    assert full.zoom_range == (0.8, 1.2) and full.brightness_range == (0.7, 1.3)
    assert full.fill_mode == "reflect" and full.channel_shift_range == 20 and full.seed == 4
    assert full.vertical_flip and full.rot90 and not full.horizontal_flip
    assert parse_augment_spec("zoom_range=0.1,width_shift_range=2").config()["zoom_range"] == [0.9, 1.1]
    assert parse_augment_spec("flip", seed=7).seed == 7 and parse_augment_spec("flip,seed=3", seed=7).seed == 3
    assert (
        repr(parse_augment_spec("rotation=15,flip"))
        == "Augmentation(rotation_range=15.0, horizontal_flip=True, seed=0)"
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("rotaton=15", "unknown augmentation 'rotaton'.*did you mean 'rotation'.*known keys"),
        ("blur=3", "unknown augmentation 'blur'"),
        ("rotation", "rotation needs a value"),
        ("rotation=fifteen", "rotation=fifteen is not valid; rotation takes a number"),
        ("brightness=1.2", "brightness takes LOW:HIGH"),
        ("flip=maybe", "flip is on/off"),
        ("shift=0.1,width_shift=0.2", "sets width_shift_range twice"),
        ("rotation=15,,flip", "empty item"),
        ("", "empty augmentation spec"),
        ("rotation=500", "rotation_range must be between 0 and 360"),
        ("fill=mirror", "unknown fill_mode"),
    ],
)
def test_bad_spec_strings_say_what_is_wrong(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_augment_spec(spec)
