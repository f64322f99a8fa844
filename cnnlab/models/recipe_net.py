"""RecipeNet: the fast recipes' network (airbench-style conv groups, whitened first layer), and ensembles of it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.core.errors import ConfigError
from cnnlab.models.registry import ModelConfig, register_model
from cnnlab.train.model import Model, check_compile_settings


def check_widths(widths) -> None:
    """RecipeNet's three conv-group widths: checked when a recipe is written and when a network is built."""
    if len(widths) != 3 or min(widths) < 1:
        raise ConfigError(f"widths must be three positive channel counts, got {widths}")


class BatchNorm(nn.BatchNorm2d):
    """BatchNorm with a fixed scale of 1: the next conv's weights can absorb any scale, so learning
    it only adds noise (as in airbench). Fast-moving statistics suit the short schedules."""

    def __init__(self, channels: int):
        super().__init__(channels, eps=1e-12, momentum=0.4)
        self.weight.requires_grad_(False)


class ConvGroup(nn.Sequential):
    """Conv 3x3 -> MaxPool 2x2 -> BN -> GELU -> Conv 3x3 -> BN -> GELU: pooling right after the first
    conv makes the second conv and the activations four times cheaper."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__(
            _dirac_conv(in_channels, channels),
            nn.MaxPool2d(2),
            BatchNorm(channels),
            nn.GELU(),
            _dirac_conv(channels, channels),
            BatchNorm(channels),
            nn.GELU(),
        )


def _dirac_conv(in_channels: int, channels: int) -> nn.Conv2d:
    """A 3x3 conv whose first filters start as identities, so a deep net starts close to a shallow one."""
    conv = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
    nn.init.dirac_(conv.weight.data[:in_channels])
    return conv


class RecipeNet(nn.Module):
    """Frozen 2x2 patch whitening, three conv groups, global max pooling, a linear layer.

    The whitening layer decorrelates the pixels of each 2x2 patch (PCA whitening, with each
    direction kept as +/- pair so GELU loses nothing): training starts from features with equal
    variance instead of spending its first epochs learning them.
    """

    WHITEN_KERNEL = 2

    def __init__(self, widths: Sequence[int] = (64, 256, 256), num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        patch = in_channels * self.WHITEN_KERNEL**2
        self.whiten = nn.Conv2d(in_channels, 2 * patch, self.WHITEN_KERNEL)
        self.whiten.weight.requires_grad_(False)
        self.groups = nn.Sequential(
            nn.GELU(),
            ConvGroup(2 * patch, widths[0]),
            ConvGroup(widths[0], widths[1]),
            ConvGroup(widths[1], widths[2]),
        )
        self.pool = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        self.temperature = 1 / 9  # airbench's logit scale: keeps early softmax outputs soft

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.groups(self.whiten(x)))) * self.temperature

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the frozen first layer from the covariance of the 2x2 patches of ``images`` (NCHW)."""
        k = self.WHITEN_KERNEL
        patches = F.unfold(images.float(), k).transpose(1, 2).reshape(-1, images.shape[1] * k * k).double()
        mean = patches.mean(0)
        centred = patches - mean
        eigenvalues, eigenvectors = torch.linalg.eigh(centred.T @ centred / len(centred))
        filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]).float()
        weight = torch.cat([filters, -filters]).to(self.whiten.weight)
        self.whiten.weight.copy_(weight.view_as(self.whiten.weight))
        self.whiten.bias.copy_(-(weight @ mean.float().to(weight)))


class RecipeEnsemble(nn.Module):
    """Several RecipeNets trained side by side from different initial weights, on the same batches.

    While training, the forward pass gives each member's logits, (members, N, classes), and Model's
    loss is the mean of the members' losses, so each member learns on its own; in eval mode it gives
    the mean of their logits. On 7,500 images one network overfits (98% training accuracy), and
    members that err differently average out much of that variance.
    """

    def __init__(self, members: int, widths: Sequence[int], num_classes: int, in_channels: int = 3):
        super().__init__()
        self.members = nn.ModuleList(RecipeNet(widths, num_classes, in_channels) for _ in range(members))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([member(x) for member in self.members])
        if not self.training:
            return logits.mean(0)
        if logits.requires_grad:  # the loss averages over members; each gets its whole gradient, as if alone
            logits.register_hook(lambda grad: grad * len(self.members))
        return logits

    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Fit the first member's whitening and copy it: the fit is deterministic, so all would get the same."""
        first, *others = self.members
        first.init_whitening(images, eps)
        for member in others:
            member.whiten.load_state_dict(first.whiten.state_dict())


@dataclass(frozen=True)
class RecipeNetConfig(ModelConfig):
    """RecipeNet's settings: its widths and the recipe's compile settings (the schedule stays in Recipe)."""

    kind: ClassVar[str] = "recipe"
    widths: tuple[int, int, int] = (64, 256, 256)
    optimizer: str = "sgd"
    learning_rate: float = 0.2
    label_smoothing: float = 0.2
    weight_decay: float = 5e-4
    filter_lr: float = 0.24
    cpu_bf16: bool = False
    members: int = 1  # more than one: a RecipeEnsemble of that many networks

    def __post_init__(self):
        super().__post_init__()
        if self.members < 1:
            raise ConfigError(f"an ensemble needs at least 1 member, got {self.members}")
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        check_widths(self.widths)
        height, width, _ = self.input_shape
        if min(height, width) < 9:  # 2x2 whitening, then three 2x2 poolings
            raise ConfigError(f"RecipeNet needs images of at least 9x9 pixels, got {height}x{width}")
        check_compile_settings(
            self.optimizer, self.learning_rate, weight_decay=self.weight_decay, label_smoothing=self.label_smoothing
        )


@register_model("recipe")
def _create_recipe_net(config: RecipeNetConfig, device="auto") -> Model:
    """RecipeNet with an identity-free, untrained whitening layer: fit it with ``init_whitening``
    (build_recipe_model does) or load its saved weights (load_model does)."""
    if config.seed is not None:
        torch.manual_seed(config.seed)
    return Model(
        RecipeNet(config.widths, config.num_classes, config.input_shape[2])
        if config.members == 1
        else RecipeEnsemble(config.members, config.widths, config.num_classes, config.input_shape[2]),
        input_shape=config.input_shape,
        optimizer=config.optimizer,
        learning_rate=config.learning_rate,
        label_smoothing=config.label_smoothing,
        weight_decay=config.weight_decay,
        filter_lr=config.filter_lr,
        cpu_bf16=config.cpu_bf16,
        config=config,
        device=device,
    )
