"""Shared machinery of the surrogate-based attacks: models, training steps, L_inf PGD.

Surrogates are st_fast models (``st_fast.models.build_model``; inputs in [0, 1], normalisation
inside), so every attack works in pixel space. A clean pretrained surrogate (TAP, HYPO) is
trained by the training engine, which the caller passes in as ``fit_model`` (attacks never
import the engine; st_fast.make_poison passes it); the min-min attacks (EM, REM)
interleave perturbation updates with a few training steps, which the short loop here does.
Everything runs on ``device`` (the GPU when there is one) with data resident there.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..data import random_crop_flip
from ..models import build_model


def build_surrogate(ds, arch: str, device: torch.device, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    h = ds.image_size[0]
    return build_model(arch, ds.num_classes, ds.channels, mean=ds.mean, std=ds.std,
                       image_size=h).to(device)


def sgd(model: torch.nn.Module, lr: float) -> torch.optim.SGD:
    """The optimiser the EM/REM papers use for their surrogates."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)


def crop_padding(ds) -> int:
    # torchvision's padding 4 at 32 px; scale with the image so 224-px ImageNet gets 28
    return max(1, round(ds.image_size[0] / 8))


class Augment:
    """Differentiable random crop (zero padding) + horizontal flip, for expectation over
    transformations (REM) and augmented crafting (TAP). Gradients flow through (it indexes)."""

    def __init__(self, padding: int, device: torch.device, seed: int):
        self.padding = padding
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return random_crop_flip(x, self.padding, True, self.gen)


def batches(n: int, batch_size: int, gen: torch.Generator, shuffle: bool = True):
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i:i + batch_size]


def train_steps(model, opt, x: torch.Tensor, y: torch.Tensor, delta_of: Callable[[torch.Tensor], torch.Tensor],
                steps: int, batch_size: int, gen: torch.Generator, augment: Augment | None = None,
                adversary: Callable | None = None, grad_clip: float | None = None) -> float:
    """``steps`` SGD steps on random batches of clamp(x + delta); returns the mean loss.

    ``delta_of(idx)`` gives the current perturbation of samples ``idx``; ``adversary(model,
    xb, yb)`` (REM) replaces the batch by an adversarial one before the step; ``grad_clip``
    clips the gradient's global L2 norm before each step (EM's authors clip at 5).
    """
    model.train()
    total = 0.0
    for _ in range(steps):
        idx = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=gen)
        xb = (x[idx] + delta_of(idx)).clamp(0, 1)
        yb = y[idx]
        if augment is not None:
            xb = augment(xb)
        if adversary is not None:
            xb = adversary(model, xb, yb)
            model.train()
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(grad_clip))
        opt.step()
        total += float(loss.detach())
    return total / max(1, steps)


def linf_pgd(model, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor, *, eps: float,
             step_size: float, steps: int, descend: bool, loss_fn: Callable | None = None) -> torch.Tensor:
    """Sign-gradient PGD on ``delta`` within the L_inf ball, keeping x + delta in [0, 1].

    descend=True minimises ``loss_fn(model, x + delta, y)`` (default cross-entropy):
    error-minimising noise; False maximises it (adversarial examples). Model in eval mode.
    """
    loss_fn = loss_fn or (lambda m, xa, ya: F.cross_entropy(m(xa), ya))
    sign = -1.0 if descend else 1.0
    delta = delta.detach().clone()
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = loss_fn(model, (x + delta).clamp(0, 1), y)
        (grad,) = torch.autograd.grad(loss, [delta])
        with torch.no_grad():
            delta = (delta + sign * step_size * grad.sign()).clamp(-eps, eps)
            delta = (x + delta).clamp(0, 1) - x
    return delta.detach()


@torch.no_grad()
def refresh_bn(model, x: torch.Tensor, delta_of: Callable[[torch.Tensor], torch.Tensor], batch_size: int,
               augment: Augment | None = None) -> None:
    """Recompute every BatchNorm layer's running statistics as the plain average over the
    batches of clamp(x + delta) (augmented like the training steps), leaving the model in eval
    mode. After only a few SGD steps at a high learning rate the running averages mix batches
    seen under older weights, and the eval-mode model can be far worse than the trained one."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None                 # cumulative average
    model.train()
    for i in range(0, len(x), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(x)), device=x.device)
        xb = (x[idx] + delta_of(idx)).clamp(0, 1)
        model(augment(xb) if augment is not None else xb)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()


@torch.no_grad()
def accuracy(model, x: torch.Tensor, y: torch.Tensor, delta_of: Callable[[torch.Tensor], torch.Tensor] | None = None,
             batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(x)), device=x.device)
        xb = x[idx] if delta_of is None else (x[idx] + delta_of(idx)).clamp(0, 1)
        correct += int((model(xb).argmax(1) == y[idx]).sum())
    return correct / max(1, len(x))


def to_device(ds, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """float images in [0, 1] and labels, resident on ``device``."""
    return ds.images.to(device).float().div_(255), ds.labels.to(device)


def log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


class Ticker:
    """About ten progress lines for a long crafting loop: done / total, rate and ETA."""

    def __init__(self, enabled: bool, name: str, total: int, unit: str = "step", lines: int = 10):
        self.enabled, self.name, self.total, self.unit = enabled, name, int(total), unit
        self.every = max(1, self.total // lines)
        self.t0 = time.perf_counter()

    def __call__(self, done: int, note: str = "") -> None:
        if not self.enabled or (done % self.every and done != self.total):
            return
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / max(done, 1) * (self.total - done)
        log(True, f"{self.name} {self.unit} {done}/{self.total}  {done / max(elapsed, 1e-9):.2f} {self.unit}/s  "
                  f"eta {int(eta) // 60:02d}:{int(eta) % 60:02d}" + (f"  {note}" if note else ""))


def craft_dataset(model, x: torch.Tensor, targets: torch.Tensor, *, eps: float, step_size: float,
                  steps: int, batch_size: int, gen: torch.Generator, augment: Augment | None = None,
                  decay_at: tuple[float, ...] = (), random_start: bool = False,
                  progress: bool = False, name: str = "") -> torch.Tensor:
    """Per-sample L_inf noise that drives a fixed model towards ``targets`` (descending the
    cross-entropy to them), batch by batch. TAP: targets = another class; HYPO: the true one.

    ``augment`` is applied inside every step (the loss of a random crop/flip of x + delta);
    the step size is multiplied by 0.1 at each fraction of ``steps`` in ``decay_at``.
    """
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    out = torch.zeros_like(x)
    decay_steps = {int(f * steps) for f in decay_at}

    def loss_fn(m, xa, ya):
        return F.cross_entropy(m(augment(xa) if augment is not None else xa), ya)

    tick = Ticker(progress, name, -(-len(x) // batch_size), "batch")
    for b, idx in enumerate(batches(len(x), batch_size, gen, shuffle=False)):
        idx = idx.to(x.device)
        xb, tb = x[idx], targets[idx]
        delta = torch.zeros_like(xb)
        if random_start:
            delta = ((torch.rand(xb.shape, generator=gen) * 2 - 1) * eps).to(x.device)
            delta = (xb + delta).clamp(0, 1) - xb
        size, done = step_size, 0
        for s in sorted(decay_steps | {steps}):
            if s > done:
                delta = linf_pgd(model, xb, tb, delta, eps=eps, step_size=size, steps=s - done,
                                 descend=True, loss_fn=loss_fn)
                done = s
            size *= 0.1
        out[idx] = delta
        tick(b + 1)
    for p in model.parameters():
        p.requires_grad_(True)
    return out
