"""Muon for the conv filters, Nesterov SGD for the rest: the optimizer of airbench94_muon.

Written here rather than taken from ``torch.optim.Muon`` because that one accepts 2-D parameters
only, while conv filters are 4-D, and because airbench's variant also renormalises each filter
tensor before its step (BatchNorm follows every conv, so only the direction of a filter matters).

"""

from __future__ import annotations

import torch
from torch import nn

# Quintic Newton-Schulz coefficients chosen for a steep slope at zero (Keller Jordan's Muon): a few
# iterations push every singular value into roughly [0.5, 1.5], which is as good as exactly 1.
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)


def orthogonalize(matrix: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """Approximately replace the singular values of ``matrix`` by ones (U S V^T -> U V^T)."""
    a, b, c = NEWTON_SCHULZ
    x = matrix / (matrix.norm() + eps)
    wide = x.shape[0] <= x.shape[1]
    x = x if wide else x.T  # iterate on the smaller Gram matrix
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.T


class MuonSGD(torch.optim.Optimizer):
    """One optimizer, two rules. Conv filters (4-D parameters): Nesterov momentum, orthogonalised
    per filter bank, with the filters renormalised to unit mean norm first. Everything else (biases,
    the linear head): plain Nesterov SGD with weight decay. Each param group keeps its own ``lr``,
    so a schedule that scales every group's initial rate drives both."""

    def __init__(
        self,
        network: nn.Module,
        lr: float,
        filter_lr: float,
        momentum: float = 0.9,
        filter_momentum: float = 0.6,
        weight_decay: float = 0.0,
    ):
        trainable = [p for p in network.parameters() if p.requires_grad]
        filters, others = [p for p in trainable if p.ndim == 4], [p for p in trainable if p.ndim != 4]
        groups = [
            {"params": filters, "lr": filter_lr, "momentum": filter_momentum, "muon": True},
            {"params": others, "lr": lr, "momentum": momentum, "muon": False},
        ]
        super().__init__([g for g in groups if g["params"]], {"weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if not group["muon"] and group["weight_decay"]:
                    grad = grad.add(param, alpha=group["weight_decay"])
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad)
                buffer = state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                update = grad.add(buffer, alpha=group["momentum"])
                if group["muon"]:
                    param.mul_(len(param) ** 0.5 / param.norm().clamp_min(1e-12))
                    update = orthogonalize(update.reshape(len(param), -1)).view_as(param)
                param.add_(update, alpha=-group["lr"])
        return loss
