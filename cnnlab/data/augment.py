"""On-the-fly image augmentation with the parameters of Keras' ImageDataGenerator, batched on the device.

Every image of a batch gets its own random parameters, drawn from a seeded generator, and the whole
batch is warped with one ``grid_sample`` call, so augmentation costs a small part of a training step.

Semantics follow Keras' ``ImageDataGenerator.random_transform`` (order: affine warp, channel shift,
horizontal flip, vertical flip, brightness); the affine matrix is Keras' rotation @ shift @ shear @ zoom
about the image centre, mapping output to input pixels, interpolated bilinearly. Images are in [-1, 1];
pixel-valued settings (channel_shift_range, cval) are in Keras' 0..255 units and converted here.

kornia.augmentation's RandomAffine does not fit: it shears with tangents before rotating, its scale is
the inverse of Keras' zoom, and it has no 'wrap' fill; so the warp is written on torch's grid_sample
(the kernel kornia itself calls) and benchmarks/augment_speed.py times it against kornia and Keras.

"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.core.errors import ConfigError, DataError

FILL_MODES = ("nearest", "constant", "reflect", "wrap")
_DRAWS = (
    "rot90",
    "rotation",
    "width_shift",
    "height_shift",
    "shear",
    "zoom_x",
    "zoom_y",
    "channel_shift",
    "horizontal_flip",
    "vertical_flip",
    "brightness",
)


def device_generator(generators: dict, device: torch.device, seed: int | None) -> torch.Generator:
    """One random generator per device, seeded once (or from entropy when seed is None), kept in ``generators``."""
    if device not in generators:
        generator = torch.Generator(device=device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        generators[device] = generator
    return generators[device]


def generator_states(generators: dict) -> dict[str, torch.Tensor]:
    """The states of ``device_generator``'s generators, keyed by device name, for checkpoints."""
    return {str(device): generator.get_state() for device, generator in generators.items()}


def restore_generators(generators: dict, states: dict[str, torch.Tensor], seed: int | None) -> None:
    """Put back what ``generator_states`` saved, so a resumed run draws the same random numbers."""
    for name, state in states.items():
        device_generator(generators, torch.device(name), seed).set_state(state.cpu())


class Augmentation:
    """A seeded, per-sample random augmentation; call it on an NCHW float batch in [-1, 1].

    Parameters mean what they mean in Keras' ImageDataGenerator:

    - ``rotation_range``: degrees, angle uniform in [-r, r] (0..360).
    - ``width_shift_range`` / ``height_shift_range``: fraction of the width/height if < 1, else pixels.
    - ``shear_range``: shear angle in degrees, uniform in [-s, s] (0..90, exclusive).
    - ``zoom_range``: z gives independent x and y factors in [1 - z, 1 + z]; or a (low, high) pair.
      Like Keras, a factor below 1 zooms in (input coordinates are multiplied by it).
    - ``horizontal_flip`` / ``vertical_flip``: flip half of the images.
    - ``brightness_range``: (low, high) factor multiplying the 0..255 pixel values, clipped to 0..255.
    - ``channel_shift_range``: one offset per image in 0..255 units, uniform in [-c, c], added to every
      channel and clipped to the image's own min and max (as Keras does).
    - ``fill_mode``: how pixels outside the image are filled: 'nearest' (aaa|abcd|ddd), 'constant'
      (``cval``, 0..255, 0 = black), 'reflect' (dcba|abcd|dcba) or 'wrap' (abcd|abcd|abcd). The first
      three equal Keras' output; 'wrap' repeats with the image's period as Keras documents it, where
      the scipy 'wrap' Keras calls repeats every size - 1 pixels (scipy's 'grid-wrap' is what we do).
    - ``rot90`` (not in Keras): rotate each image by k * 90 degrees, k uniform in {0, 1, 2, 3}
      (square images only), which teaches a model every orientation the lab's rotated test uses.
    - ``seed``: seeds the generator; calls continue its stream, so two runs with one seed agree.
    """

    def __init__(
        self,
        rotation_range: float = 0.0,
        width_shift_range: float = 0.0,
        height_shift_range: float = 0.0,
        shear_range: float = 0.0,
        zoom_range: float | tuple[float, float] = 0.0,
        horizontal_flip: bool = False,
        vertical_flip: bool = False,
        brightness_range: tuple[float, float] | None = None,
        channel_shift_range: float = 0.0,
        fill_mode: str = "nearest",
        cval: float = 0.0,
        rot90: bool = False,
        seed: int | None = 0,
    ):
        self.rotation_range = _in_range("rotation_range", rotation_range, 0, 360, "degrees, e.g. 15")
        self.width_shift_range = _in_range("width_shift_range", width_shift_range, 0, math.inf, _SHIFT_HINT)
        self.height_shift_range = _in_range("height_shift_range", height_shift_range, 0, math.inf, _SHIFT_HINT)
        self.shear_range = _in_range("shear_range", shear_range, 0, 90, "degrees below 90, e.g. 10")
        if shear_range == 90:
            raise ConfigError("shear_range must be below 90 degrees (a 90-degree shear flattens the image)")
        self.zoom_range = _zoom_bounds(zoom_range)
        self.brightness_range = _brightness_bounds(brightness_range)
        self.channel_shift_range = _in_range(
            "channel_shift_range", channel_shift_range, 0, 255, "0..255 pixel units, e.g. 20"
        )
        if fill_mode not in FILL_MODES:
            raise ConfigError(f"unknown fill_mode {fill_mode!r}; choose one of {FILL_MODES}")
        self.fill_mode = fill_mode
        self.cval = _in_range("cval", cval, 0, 255, "a 0..255 pixel value, 0 = black")
        self.horizontal_flip, self.vertical_flip, self.rot90 = bool(horizontal_flip), bool(vertical_flip), bool(rot90)
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            raise ConfigError(f"seed must be a non-negative integer or None, got {seed!r}")
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def config(self) -> dict:
        """The settings as a dict (Keras' names), for run folders and reports."""
        return {
            "rotation_range": self.rotation_range,
            "width_shift_range": self.width_shift_range,
            "height_shift_range": self.height_shift_range,
            "shear_range": self.shear_range,
            "zoom_range": list(self.zoom_range),
            "horizontal_flip": self.horizontal_flip,
            "vertical_flip": self.vertical_flip,
            "brightness_range": list(self.brightness_range) if self.brightness_range else None,
            "channel_shift_range": self.channel_shift_range,
            "fill_mode": self.fill_mode,
            "cval": self.cval,
            "rot90": self.rot90,
            "seed": self.seed,
        }

    def __repr__(self) -> str:
        defaults = Augmentation(seed=None).config()
        changed = {k: v for k, v in self.config().items() if v != defaults[k]}
        return "Augmentation(" + ", ".join(f"{k}={v!r}" for k, v in changed.items()) + ")"

    @property
    def _warps(self) -> bool:
        return bool(
            self.rotation_range
            or self.width_shift_range
            or self.height_shift_range
            or self.shear_range
            or self.zoom_range != (1.0, 1.0)
        )

    def _generator(self, device: torch.device) -> torch.Generator:
        return device_generator(self._generators, device, self.seed)

    def get_state(self) -> dict:
        """The random generators' states, for checkpoints: a resumed run draws the same transforms."""
        return generator_states(self._generators)

    def set_state(self, state: dict) -> None:
        restore_generators(self._generators, state, self.seed)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Augment a batch (N, C, H, W) of floats in [-1, 1]; returns the same shape, channels_last."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
            raise DataError(
                "augmentation takes a float tensor of shape (N, channels, height, width); got "
                + (
                    f"{images.dtype} {tuple(images.shape)}"
                    if isinstance(images, torch.Tensor)
                    else type(images).__name__
                )
            )
        n, _, height, width = images.shape
        if self.rot90 and height != width:
            raise DataError(f"rot90 needs square images (a quarter turn swaps height and width), got {height}x{width}")
        if n == 0:
            return images
        dtype = images.dtype
        x = images.float()
        # One draw per image and setting, in a fixed layout: a seed gives the same stream for any settings.
        draws = torch.rand(n, len(_DRAWS), generator=self._generator(x.device), device=x.device)

        def between(name: str, low: float, high: float) -> torch.Tensor:
            return draws[:, _DRAWS.index(name)] * (high - low) + low

        def coin(name: str) -> torch.Tensor:
            return draws[:, _DRAWS.index(name)] < 0.5

        if self.rot90:
            turns = (draws[:, _DRAWS.index("rot90")] * 4).long().clamp(max=3)
            rotated = x.clone()
            for k in (1, 2, 3):
                chosen = (turns == k).nonzero().squeeze(1)
                rotated[chosen] = torch.rot90(x[chosen], k, dims=(2, 3))
            x = rotated
        flip_x = coin("horizontal_flip") if self.horizontal_flip else None
        flip_y = coin("vertical_flip") if self.vertical_flip else None
        if self._warps:
            width_shift = self.width_shift_range * (width if self.width_shift_range < 1 else 1)
            height_shift = self.height_shift_range * (height if self.height_shift_range < 1 else 1)
            x = affine_warp(
                x,
                rotation=between("rotation", -self.rotation_range, self.rotation_range),
                shift_x=between("width_shift", -width_shift, width_shift),
                shift_y=between("height_shift", -height_shift, height_shift),
                shear=between("shear", -self.shear_range, self.shear_range),
                zoom_x=between("zoom_x", *self.zoom_range),
                zoom_y=between("zoom_y", *self.zoom_range),
                fill_mode=self.fill_mode,
                cval=self.cval,
                flip_x=flip_x,  # flipping the output in the warp saves a pass; the channel shift
                flip_y=flip_y,  # below is the same for every pixel, so the order does not matter
            )
            flip_x = flip_y = None
        if self.channel_shift_range:
            low = x.amin(dim=(1, 2, 3), keepdim=True)
            high = x.amax(dim=(1, 2, 3), keepdim=True)
            shift = between("channel_shift", -self.channel_shift_range, self.channel_shift_range) / 127.5
            x = torch.minimum(torch.maximum(x + shift.view(n, 1, 1, 1), low), high)
        if flip_x is not None:
            x = torch.where(flip_x.view(n, 1, 1, 1), x.flip(3), x)
        if flip_y is not None:
            x = torch.where(flip_y.view(n, 1, 1, 1), x.flip(2), x)
        if self.brightness_range:
            factor = between("brightness", *self.brightness_range).view(n, 1, 1, 1)
            x = ((x + 1) * factor - 1).clamp(-1, 1)  # [-1, 1] <-> 0..255: p * f clipped to 0..255
        return x.to(dtype).contiguous(memory_format=torch.channels_last)


def affine_warp(
    images: torch.Tensor,
    rotation: torch.Tensor,
    shift_x: torch.Tensor,
    shift_y: torch.Tensor,
    shear: torch.Tensor,
    zoom_x: torch.Tensor,
    zoom_y: torch.Tensor,
    fill_mode: str = "nearest",
    cval: float = 0.0,
    flip_x: torch.Tensor | None = None,
    flip_y: torch.Tensor | None = None,
) -> torch.Tensor:
    """Keras' apply_affine_transform for a batch, one parameter per image (degrees, pixels, factors).

    Keras' matrix rotation @ shift @ shear @ zoom, about the image centre in (x = column, y = row) pixel
    coordinates, maps each output pixel to the input point sampled (bilinearly). It is rewritten for
    grid_sample's coordinates, where the centre is 0 and the edges are -1 and 1 (p = size/2 * u + centre).
    ``flip_x``/``flip_y`` (booleans per image) mirror the output, which folds a flip into the same pass.
    """
    _, _, height, width = images.shape
    angle, shear = torch.deg2rad(rotation), torch.deg2rad(shear)
    cos, sin = angle.cos(), angle.sin()
    skew, stretch = -shear.sin() * zoom_y, shear.cos() * zoom_y
    aspect = height / width
    # input (x, y) = [[xx, xy], [yx, yy]] @ output (x, y) + (x0, y0), per image, in grid coordinates
    xx, xy, x0 = cos * zoom_x, (cos * skew - sin * stretch) * aspect, (cos * shift_x - sin * shift_y) * 2 / width
    yx, yy, y0 = sin * zoom_x / aspect, sin * skew + cos * stretch, (sin * shift_x + cos * shift_y) * 2 / height
    if flip_x is not None:
        sign = 1 - 2 * flip_x.to(xx.dtype)
        xx, yx = xx * sign, yx * sign
    if flip_y is not None:
        sign = 1 - 2 * flip_y.to(xx.dtype)
        xy, yy = xy * sign, yy * sign
    columns = (torch.arange(width, device=images.device, dtype=torch.float32) * 2 + 1) / width - 1
    rows = (torch.arange(height, device=images.device, dtype=torch.float32)[:, None] * 2 + 1) / height - 1
    # The sampling grid (N, H, W, 2), as affine_grid makes it, written in place: 4x faster on a CPU.
    grid = torch.empty(len(images), height, width, 2, device=images.device)
    for axis, (along_x, along_y, offset) in enumerate(((xx, xy, x0), (yx, yy, y0))):
        torch.addcmul(offset.view(-1, 1, 1), along_x.view(-1, 1, 1), columns.expand(height, width), out=grid[..., axis])
        grid[..., axis].addcmul_(along_y.view(-1, 1, 1), rows)
    size = torch.tensor([width, height], device=images.device, dtype=grid.dtype)
    if fill_mode == "wrap":  # periodic coordinates, sampled from the image padded by one wrapped pixel
        grid = (torch.remainder(grid + 1, 2) - 1) * size / (size + 2)
        images = F.pad(images, (1, 1, 1, 1), mode="circular")
    warped = F.grid_sample(
        images,
        grid,
        mode="bilinear",
        padding_mode="reflection" if fill_mode == "reflect" else "border",
        align_corners=False,
    )
    if fill_mode == "constant":  # as scipy's 'constant': cval wherever the point leaves the pixel centres' hull
        outside = (grid.abs() > 1 - 0.9998 / size).any(-1).unsqueeze(1)  # edge pixels (+- 1e-4 px) stay in
        warped = warped.masked_fill(outside, cval / 127.5 - 1)
    return warped


_SHIFT_HINT = "a fraction of the size below 1 (e.g. 0.1) or pixels from 1 up"


def _in_range(name: str, value, low: float, high: float, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a number ({hint}), got {value!r}")
    if not low <= value <= high:
        bound = f"between {low} and {high}" if math.isfinite(high) else f"at least {low}"
        raise ConfigError(f"{name} must be {bound} ({hint}), got {value}")
    return float(value)


def _pair(name: str, value, hint: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a (low, high) pair, {hint}; got {value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError(f"{name} must hold finite numbers, got {value!r}")
    if low > high:
        raise ConfigError(f"{name} low bound {low} is above its high bound {high}; give (low, high), {hint}")
    return low, high


def _zoom_bounds(zoom_range) -> tuple[float, float]:
    """Keras' zoom_range: a float z means [1 - z, 1 + z]; a pair is taken as it is."""
    hint = "e.g. 0.1 for factors in [0.9, 1.1]"
    if isinstance(zoom_range, int | float) and not isinstance(zoom_range, bool):
        if not 0 <= zoom_range < 1:
            raise ConfigError(f"zoom_range must be in [0, 1) ({hint}) or a (low, high) pair, got {zoom_range}")
        return 1.0 - zoom_range, 1.0 + zoom_range
    low, high = _pair("zoom_range", zoom_range, hint)
    if low <= 0:
        raise ConfigError(f"zoom_range factors must be above 0 ({hint}), got {zoom_range!r}")
    return low, high


def _brightness_bounds(brightness_range) -> tuple[float, float] | None:
    if brightness_range is None:
        return None
    low, high = _pair("brightness_range", brightness_range, "e.g. (0.8, 1.2)")
    if low < 0:
        raise ConfigError(f"brightness_range factors must be 0 or more, got {brightness_range!r}")
    return low, high


def augment_array(augment: Callable[[torch.Tensor], torch.Tensor], images: np.ndarray) -> np.ndarray:
    """Apply an augmentation callable to NHWC float images in [-1, 1] (e.g. for a preview)."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise DataError(f"images must be (N, height, width, channels), got shape {images.shape}")
    batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return augment(batch).permute(0, 2, 3, 1).contiguous().numpy()


_SPEC_KEYS = {
    "rotation": "rotation_range",
    "shift": ("width_shift_range", "height_shift_range"),
    "width_shift": "width_shift_range",
    "height_shift": "height_shift_range",
    "shear": "shear_range",
    "zoom": "zoom_range",
    "flip": "horizontal_flip",
    "hflip": "horizontal_flip",
    "vflip": "vertical_flip",
    "brightness": "brightness_range",
    "channel_shift": "channel_shift_range",
    "fill": "fill_mode",
    "cval": "cval",
    "rot90": "rot90",
    "seed": "seed",
}
_SPEC_KEYS.update({name: name for name in Augmentation(seed=None).config()})


_FLAGS = {"horizontal_flip", "vertical_flip", "rot90"}
_PAIRS = {"zoom_range", "brightness_range"}


_TRUE, _FALSE = {"", "1", "true", "yes", "on"}, {"0", "false", "no", "off"}


SPEC_HELP = (
    "comma-separated KEY[=VALUE]: rotation=DEG, shift=FRACTION (width_shift/height_shift), shear=DEG, "
    "zoom=Z or LOW:HIGH, flip, vflip, brightness=LOW:HIGH, channel_shift=0..255, "
    f"fill={'|'.join(FILL_MODES)}, cval=0..255, rot90, seed=N; e.g. rotation=15,shift=0.1,flip"
)


def parse_augment_spec(text: str, seed: int | None = 0) -> Augmentation:
    """Build an Augmentation from a CLI spec such as ``rotation=15,shift=0.1,flip`` (see SPEC_HELP).

    ``seed`` (e.g. the training seed) is used unless the spec sets its own ``seed=N``."""
    settings: dict = {}
    items = [item.strip() for item in (text or "").split(",")]
    if not any(items):
        raise ConfigError(f"empty augmentation spec; give {SPEC_HELP}")
    for item in items:
        if not item:
            raise ConfigError(f"empty item in augmentation spec {text!r} (two commas in a row?)")
        key, has_value, value = (part.strip() for part in item.partition("="))
        key = key.lower().replace("-", "_")
        if key not in _SPEC_KEYS:
            close = difflib.get_close_matches(key, _SPEC_KEYS, n=1)
            raise ConfigError(
                f"unknown augmentation {key!r} in {text!r}"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + f"; known keys: {', '.join(sorted(_SPEC_KEYS))}"
            )
        targets = _SPEC_KEYS[key]
        for target in (targets,) if isinstance(targets, str) else targets:
            if target in settings:
                raise ConfigError(f"augmentation spec {text!r} sets {target} twice")
            settings[target] = _spec_value(target, key, value if has_value else None)
    return Augmentation(**{"seed": seed, **settings})


def _spec_value(target: str, key: str, value: str | None):
    if target in _FLAGS:
        word = (value or "").lower()
        if word in _TRUE | _FALSE:
            return word in _TRUE
        raise ConfigError(f"{key} is on/off: write {key} or {key}=false, not {key}={value}")
    if value is None or value == "":
        raise ConfigError(f"{key} needs a value, e.g. {key}={'0.8:1.2' if target in _PAIRS else 'VALUE'}")
    if target == "fill_mode":
        return value.lower()
    try:
        if target == "seed":
            return int(value)
        if target in _PAIRS and ":" in value:
            return tuple(float(v) for v in value.split(":", 1))
        if target == "brightness_range":
            raise ValueError
        return float(value)
    except ValueError:
        form = "LOW:HIGH, e.g. 0.8:1.2" if target == "brightness_range" else "a number"
        raise ConfigError(f"{key}={value} is not valid; {key} takes {form}") from None
