"""Orthogonal projection (Sandoval-Segura et al., "What Can We Learn from Unlearnable
Datasets?", NeurIPS 2023), a data-side defence: ``ortho-proj``.

A poison that a linear model can separate (class-wise EM, SP/LSP, OPS) is what a bias-free
linear classifier trained on the raw pixels learns: its class weight vectors recover the
perturbations. Projecting every training image onto the orthogonal complement of the span of
those K vectors removes the shortcut; natural training follows.

Published settings (the authors' orthogonal_projection_step_1/2 scripts): pixels in [0, 1],
not normalised; bias-free linear layer; plain SGD lr 0.1 (no momentum, no weight decay) with
the lr x0.1 at 50% and 75% of 20 epochs; batches of 1024 in dataset order (no shuffling); the
basis is the QR decomposition of the row-normalised weights. What st_fast adds: the projected
images (real-valued, partly negative) are mapped to uint8 by one affine map for the whole set
(its min to 0, its max to 255), because the engine trains on uint8 images; one map for every
image adds the same vector to all of them, so no class information comes back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import ImageDataset
from ..errors import UserError
from .base import Defence, register

DEFAULTS = {"epochs": 20, "lr": 0.1, "batch_size": 1024}


def fit_linear(images: torch.Tensor, labels: torch.Tensor, num_classes: int, *, epochs: int = 20,
               lr: float = 0.1, batch_size: int = 1024, seed: int = 0) -> torch.Tensor:
    """The (K, D) weights of a bias-free linear classifier on the raw pixels (uint8 images)."""
    if len(images) == 0 or int(labels.unique().numel()) < 2:
        raise UserError("orthogonal projection needs training images of at least 2 classes")
    x = images.flatten(1).float().div_(255)
    d = x.shape[1]
    g = torch.Generator().manual_seed(seed)
    # torch.nn.Linear's default init: U(-1/sqrt(D), 1/sqrt(D))
    w = ((torch.rand(num_classes, d, generator=g) * 2 - 1) / d ** 0.5).requires_grad_()
    milestones = (int(epochs * 0.5), int(epochs * 0.75))
    for epoch in range(epochs):
        step_lr = lr * 0.1 ** sum(epoch >= m for m in milestones)
        for i in range(0, len(x), batch_size):
            loss = F.cross_entropy(x[i:i + batch_size] @ w.t(), labels[i:i + batch_size])
            (grad,) = torch.autograd.grad(loss, w)
            with torch.no_grad():
                w -= step_lr * grad
    return w.detach()


def project_out(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` (N, D) minus their components in the span of the rows of ``weights``."""
    directions = weights / weights.norm(dim=1, keepdim=True).clamp_min(1e-12)
    q, _ = torch.linalg.qr(directions.t())          # (D, K): an orthonormal basis of the span
    return x - (x @ q) @ q.t()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """One affine map for the whole set: min -> 0, max -> 255 (constant input -> 0)."""
    lo, hi = x.min(), x.max()
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return ((x - lo) * scale).round_().clamp_(0, 255).to(torch.uint8)


def orthogonal_projection(epochs: int = DEFAULTS["epochs"], lr: float = DEFAULTS["lr"],
                          batch_size: int = DEFAULTS["batch_size"]):
    def prepare(train: ImageDataset, seed: int) -> ImageDataset:
        w = fit_linear(train.images, train.labels, train.num_classes, epochs=epochs, lr=lr,
                       batch_size=batch_size, seed=seed)
        projected = project_out(train.images.flatten(1).float().div(255), w)
        return train.with_images(to_uint8(projected).view_as(train.images))

    return prepare


def ortho_proj_defence(epochs: int = DEFAULTS["epochs"], lr: float = DEFAULTS["lr"],
                       batch_size: int = DEFAULTS["batch_size"]) -> Defence:
    """The ``ortho-proj`` defence with these settings of its linear model (defaults: published)."""
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if value < 1:
            raise UserError(f"ortho-proj {name} must be >= 1, got {value}")
    if not lr > 0:
        raise UserError(f"ortho-proj lr must be > 0, got {lr}")
    return Defence(
        name="ortho-proj",
        summary=f"orthogonal projection: remove the span of a bias-free linear model's class weights "
                f"({epochs} epochs, SGD lr {lr}, batch {batch_size}) from every training image "
                f"(Sandoval-Segura et al. 2023)",
        prepare=orthogonal_projection(epochs, lr, batch_size),
        params={"epochs": epochs, "lr": lr, "batch_size": batch_size}, build=ortho_proj_defence)


register(ortho_proj_defence())
