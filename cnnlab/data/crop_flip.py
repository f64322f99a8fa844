"""The fast recipes' augmentation: reflect-padded random crops, flips and cutout, on the device.

It is a smaller, faster job than ``Augmentation``'s affine warps: a shift by whole pixels is an index
operation, so a batch of 256 costs well under a millisecond.
"""

from __future__ import annotations

import torch

from cnnlab.core.errors import ConfigError
from cnnlab.data.augment import device_generator, generator_states, restore_generators


class CropFlip:
    """Per-image random shift (reflect padding) and horizontal flip, as one gather on the device.

    cnnlab.data.augment reproduces Keras' ImageDataGenerator with a bilinear affine warp; the recipe wants
    whole-pixel shifts (no interpolation blur) and a cheaper op, since it runs on every step.
    """

    def __init__(self, translate: int = 2, flip: bool = True, seed: int | None = 0, cutout: int = 0):
        if translate < 0 or cutout < 0:
            raise ConfigError(f"translate and cutout must be >= 0 pixels, got {translate} and {cutout}")
        self.translate, self.flip, self.seed, self.cutout = translate, flip, seed, cutout
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        return device_generator(self._generators, device, self.seed)

    def get_state(self) -> dict:
        """The random generators' states, for checkpoints: a resumed run draws the same shifts."""
        return generator_states(self._generators)

    def set_state(self, state: dict) -> None:
        restore_generators(self._generators, state, self.seed)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, H, W) in channels_last memory."""
        n, _, height, width = images.shape
        generator, device = self._generator(images.device), images.device
        r = self.translate
        shift_y = torch.randint(-r, r + 1, (n, 1), generator=generator, device=device)
        shift_x = torch.randint(-r, r + 1, (n, 1), generator=generator, device=device)
        rows = _reflect(torch.arange(height, device=device) + shift_y, height)
        cols = torch.arange(width, device=device).expand(n, width)
        if self.flip:
            flipped = torch.rand(n, 1, generator=generator, device=device) < 0.5
            cols = torch.where(flipped, width - 1 - cols, cols)
        cols = _reflect(cols + shift_x, width)
        nhwc = images.permute(0, 2, 3, 1)
        picked = nhwc[torch.arange(n, device=device)[:, None, None], rows[:, :, None], cols[:, None, :]]
        if self.cutout:
            picked = self._cut_out(picked, generator)
        return picked.permute(0, 3, 1, 2)

    def _cut_out(self, nhwc: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Zero (mid-grey on the [-1, 1] scale) one square of side ``cutout`` inside each image."""
        n, height, width, _ = nhwc.shape
        side, device = min(self.cutout, height, width), nhwc.device
        top = torch.randint(0, height - side + 1, (n, 1, 1), generator=generator, device=device)
        left = torch.randint(0, width - side + 1, (n, 1, 1), generator=generator, device=device)
        rows = torch.arange(height, device=device)[None, :, None]
        cols = torch.arange(width, device=device)[None, None, :]
        square = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
        return nhwc.masked_fill(square[..., None], 0.0)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Mirror out-of-range indices back inside (dcb|abcd|cba), like reflect padding."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)
