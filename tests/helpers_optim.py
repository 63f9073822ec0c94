"""FusedSGD test harness: a tiny ResNet, seeded gradients, and torch's per-unit SGD to match."""

from __future__ import annotations

import copy

import torch
from torch import nn

from st_fast.optim import FusedSGD

TOL = 1e-6

# (momentum, dampening, nesterov, weight_decay): every branch of the update.
HYPER = [
    (0.0, 0.0, False, 0.0),
    (0.0, 0.0, False, 5e-4),
    (0.9, 0.0, False, 5e-4),
    (0.9, 0.1, False, 1e-3),
    (0.9, 0.0, True, 5e-4),
]


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class TinyResNet(nn.Module):
    """A 5-unit ResNet (stem, three blocks, head): 29 parameter tensors, ~29k values."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8))
        self.blocks = nn.ModuleList([_Block(8, 8), _Block(8, 16, 2), _Block(16, 32, 2)])
        self.head = nn.Linear(32, classes)

    def units(self) -> list[nn.Module]:
        return [self.stem, *self.blocks, self.head]

    def forward(self, x):
        x = torch.relu(self.stem(x))
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean((2, 3)))


UNIT_SCALES = [0.0, 0.25, 0.5, 1.0, 1.5]  # includes 0: a frozen shallow unit


def torch_sgd_per_unit(model: TinyResNet, scales, lr: float, **hyper) -> torch.optim.SGD:
    """The definition FusedSGD must match: one group per unit, single-tensor loop."""
    groups = [
        {"params": list(unit.parameters()), "lr": lr * s}
        for unit, s in zip(model.units(), scales, strict=True)
    ]
    return torch.optim.SGD(groups, lr=lr, foreach=False, **hyper)


def random_grads(params, seed: int, layouts: bool = False, scale: float = 0.05):
    """Seeded gradients of a realistic size; with ``layouts`` some are non-contiguous views.

    The size matters for the 1e-6 tolerance: parameters stay O(1), where fp32 spacing is ~1e-7.
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return (torch.randn(shape, generator=gen) * scale).to(device=params[0].device)

    grads = []
    for i, p in enumerate(params):
        if layouts and p.dim() == 4 and i % 2 == 0:
            g = randn(p.shape[0], p.shape[2], p.shape[3], p.shape[1]).permute(0, 3, 1, 2)
        elif layouts and p.dim() >= 2:
            g = randn(*reversed(p.shape)).permute(*reversed(range(p.dim())))  # transposed
        elif layouts and p.dim() == 1 and p.numel() > 2:
            g = randn(2 * p.numel())[::2]  # strided: not dense
        else:
            g = randn(*p.shape)
        grads.append(g if g.dtype == p.dtype else g.to(p.dtype))
    return grads


def set_grads(params, grads, skip=()):
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        p.grad = None if i in skip else g.clone()


def train_together(runs, steps, layouts=False, skip=(), after_step=None, first_step=0):
    """Step several (params, optimizer) pairs on the same seeded gradients."""
    for step in range(first_step, first_step + steps):
        grads = random_grads(runs[0][0], seed=step, layouts=layouts)
        for params, opt in runs:
            set_grads(params, grads, skip)
            opt.step()
        if after_step is not None:
            after_step()


def max_diff(params_a, params_b) -> float:
    return max((a - b).abs().max().item() for a, b in zip(params_a, params_b, strict=True))


def run_pair(backend, hyper, steps=50, layouts=False, skip=(), scales=UNIT_SCALES, lr=0.1):
    """Train a FusedSGD copy and a torch per-unit-groups copy on the same random gradients."""
    momentum, dampening, nesterov, weight_decay = hyper
    kw = dict(momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=weight_decay)
    torch.manual_seed(0)
    model = TinyResNet()
    twin = copy.deepcopy(model)
    fused = FusedSGD(model.parameters(), lr=lr, backend=backend, **kw)
    fused.set_lr_scale(scales, units=model.units())
    reference = torch_sgd_per_unit(twin, scales, lr, **kw)
    runs = [(list(model.parameters()), fused), (list(twin.parameters()), reference)]
    train_together(runs, steps, layouts=layouts, skip=skip)
    return model, twin, fused, reference
