"""D-VAE (Yu et al., "Purify Unlearnable Examples via Rate-Constrained Variational
Autoencoders", ICML 2024), a data-side defence: ``d-vae``.

A VAE whose rate (the KL term) is held down cannot spend bits on a small sample-wise or
class-wise perturbation, so its reconstructions lose most of it. D-VAE adds learnable
class-wise embeddings and a second, auxiliary decoder that reads them (plus the latent) and
outputs the perturbation, so the poison is disentangled from the image:

    x  ->  encoder  ->  (mu, log var) on an H/2 x W/2 grid  ->  z  ->  decoder        ->  x_rec
                                                               z + e_y  ->  aux decoder  ->  p
    loss = mse(x_rec, x) + mse(clamp(x_rec + p), x) + kl_weight * max(KL, kl_target)
           [+ max(mean p^2, p_floor) once the perturbation penalty starts]

Two stages, as the authors' main_vae_disentangle.py runs them: stage 1 trains a D-VAE at a
low rate target (1.0) on the poisoned set and replaces every image x by clamp(x - p); stage 2
trains a fresh D-VAE at the final target (3.0 in the authors' scripts; 2.5 their script
default) on the stage-1 images and replaces every x1 by the reconstruction of clamp(x1 - p).
NT then trains on the stage-2 images. KL is the authors' measure: nats per latent position,
summed over the latent channels, averaged over the positions of the grid and the images.

Published settings (configs/cifar10/resnet18DVAE.yaml and the script): encoder = a ResNet-18
stem up to the first block of layer2 (width 64, then 128 at stride 2), latent 256 channels,
transposed-conv decoders with instance norm, Adam lr 5e-3 (no weight decay), cosine annealing
to 0 over 60 epochs, batch 128 (shuffled, last partial batch dropped), gradient norm clipped
at 5, KL weight 0.01, perturbation floor 0.002 from epoch 11 of 60. Scaled down for the CPU
(see docs/defences.md): ``width`` and ``epochs``; every other published value is the default.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import ImageDataset
from ..errors import TrainingDiverged, UserError
from .base import Defence, register


@dataclass(frozen=True)
class DVAESettings:
    """What one D-VAE purification runs with. Defaults: published, except width and epochs."""

    width: int = 8                         # published 64 (ResNet-18 stem); 8 for the CPU
    epochs: int = 5                        # published 60, per stage; 5 for the CPU
    latent: int = 256
    lr: float = 5e-3
    batch_size: int = 128
    grad_clip: float = 5.0
    kl_targets: tuple[float, float] = (1.0, 3.0)   # stage 1, stage 2
    kl_weight: float = 0.01
    perturbation_floor: float = 0.002
    # the authors add the perturbation penalty from epoch 11 of 60 (``epoch > 10``)
    perturbation_penalty_from: float = 11 / 60

    def __post_init__(self):
        if self.width < 2 or self.width % 2:
            raise UserError(f"d-vae width must be an even number >= 2, got {self.width}")
        for name in ("epochs", "latent", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"d-vae {name} must be >= 1, got {getattr(self, name)}")
        if len(self.kl_targets) != 2 or min(self.kl_targets) <= 0:
            raise UserError(f"d-vae kl_targets must be two positive numbers, got {self.kl_targets}")
        positive = ("lr", "grad_clip", "kl_weight", "perturbation_floor")
        if not all(math.isfinite(getattr(self, n)) and getattr(self, n) > 0 for n in positive):
            raise UserError(f"d-vae {', '.join(positive)} must be finite and > 0")
        if not 0 <= self.perturbation_penalty_from <= 1:
            raise UserError("d-vae perturbation_penalty_from is a fraction of the epochs in [0, 1]")


PUBLISHED = DVAESettings(width=64, epochs=60)
DEFAULTS = DVAESettings()


class ResidualBlock(nn.Module):
    """ResNet basic block: conv-BN-ReLU-conv-BN plus a (projected) shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


def upsampling_decoder(cin: int, width: int, channels: int) -> nn.Sequential:
    """Grid H/2 x W/2 with ``cin`` channels -> (about) H x W with ``channels``; no output squashing."""
    return nn.Sequential(
        nn.ConvTranspose2d(cin, width, 4, 2, 1), nn.ConvTranspose2d(width, width, 3, 1, 1),
        nn.InstanceNorm2d(width), nn.ReLU(),
        nn.ConvTranspose2d(width, width // 2, 3, 1, 1), nn.InstanceNorm2d(width // 2), nn.ReLU(),
        nn.ConvTranspose2d(width // 2, channels, 3, 1, 1))


class DVAE(nn.Module):
    """Encoder to a spatial Gaussian latent; an image decoder; a perturbation decoder that
    reads the latent plus a learnable embedding of the label (one per class, per position)."""

    def __init__(self, channels: int, num_classes: int, size: tuple[int, int], width: int, latent: int):
        super().__init__()
        mid = 2 * width
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            ResidualBlock(width, width), ResidualBlock(width, width), ResidualBlock(width, mid, 2))
        self.to_mu = nn.Conv2d(mid, latent, 1)
        self.to_log_var = nn.Conv2d(mid, latent, 1)
        self.from_latent = nn.Conv2d(latent, mid, 1)
        self.decoder = upsampling_decoder(mid, width, channels)
        self.perturbation_decoder = upsampling_decoder(mid, width, channels)
        grid = ((size[0] + 1) // 2, (size[1] + 1) // 2)   # the stride-2 block's output
        self.class_embedding = nn.Parameter(torch.randn(num_classes, mid, *grid))
        self.size = size

    def forward(self, x, y, generator: torch.Generator):
        h = self.encoder(x)
        mu, log_var = self.to_mu(h), self.to_log_var(h)
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = self.from_latent(mu + noise * torch.exp(0.5 * log_var))
        rows, cols = self.size   # odd sizes come back one pixel larger: crop
        rec = torch.sigmoid(self.decoder(z))[..., :rows, :cols]
        perturbation = self.perturbation_decoder(z + self.class_embedding[y])[..., :rows, :cols]
        return rec, perturbation, mu, log_var


def kl_per_position(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) in nats, summed over latent channels, mean over positions and images."""
    return (-0.5 * (1 + log_var - mu.pow(2) - log_var.exp())).sum(1).mean()


def dvae_loss(x, rec, perturbation, mu, log_var, kl_target: float, s: DVAESettings, penalise_p: bool):
    kl = kl_per_position(mu, log_var)
    loss = (F.mse_loss(rec, x) + F.mse_loss((rec + perturbation).clamp(0, 1), x)
            + s.kl_weight * kl.clamp_min(kl_target))   # the rate constraint: no pull below target
    if penalise_p:
        loss = loss + perturbation.pow(2).mean().clamp_min(s.perturbation_floor)
    return loss, kl


def train_dvae(x: torch.Tensor, y: torch.Tensor, num_classes: int, kl_target: float,
               s: DVAESettings, seed: int) -> tuple[DVAE, list[dict]]:
    """A D-VAE fitted to images ``x`` (float in [0, 1], (N, C, H, W)) with labels ``y``.

    All randomness is local: the weights are drawn under a forked global RNG seeded with
    ``seed`` (the caller's global RNG state is restored), batches and latent noise come from a
    local generator. Returns the model (eval mode) and one row per epoch (loss, KL).
    """
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = DVAE(x.shape[1], num_classes, tuple(x.shape[2:]), s.width, s.latent).to(x.device)
    g = torch.Generator(device=x.device).manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr, weight_decay=0.0)
    batch = min(s.batch_size, len(x))           # a set smaller than one batch is one batch
    penalty_start = round(s.perturbation_penalty_from * s.epochs)
    history = []
    model.train()
    for epoch in range(s.epochs):
        for group in opt.param_groups:          # cosine annealing to 0, stepped per epoch
            group["lr"] = s.lr * 0.5 * (1 + math.cos(math.pi * epoch / s.epochs))
        order = torch.randperm(len(x), generator=g, device=x.device)
        losses, kls = [], []
        for i in range(0, len(x) - batch + 1, batch):   # the last partial batch is dropped
            idx = order[i:i + batch]
            out = model(x[idx], y[idx], g)
            loss, kl = dvae_loss(x[idx], *out, kl_target, s, penalise_p=epoch >= penalty_start)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"d-vae training diverged (loss {loss.item()}) in epoch {epoch + 1}; "
                                       f"try a lower lr than {s.lr}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
            opt.step()
            losses.append(loss.item())
            kls.append(kl.item())
        history.append({"epoch": epoch, "loss": sum(losses) / len(losses), "kl": sum(kls) / len(kls)})
    return model.eval(), history


@torch.no_grad()
def purify(model: DVAE, x: torch.Tensor, y: torch.Tensor, *, reconstruct: bool, seed: int,
           chunk: int = 512) -> tuple[torch.Tensor, float]:
    """clamp(x - p) (stage 1), or the reconstruction of it (stage 2), in eval mode with a
    sampled latent as the authors purify; and the mean KL per position over ``x``."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    out, kl_sum = torch.empty_like(x), 0.0
    for i in range(0, len(x), chunk):
        xb, yb = x[i:i + chunk], y[i:i + chunk]
        _, p, mu, log_var = model(xb, yb, g)
        kl_sum += kl_per_position(mu, log_var).item() * len(xb)
        cleaned = (xb - p).clamp(0, 1)
        out[i:i + chunk] = model(cleaned, yb, g)[0] if reconstruct else cleaned
    return out, kl_sum / len(x)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> the nearest uint8 (the authors truncate; rounding keeps the mean)."""
    return x.mul(255).round_().clamp_(0, 255).to(torch.uint8)


def check_trainable(train: ImageDataset) -> None:
    if len(train) == 0 or int(train.labels.unique().numel()) < 2:
        raise UserError("d-vae needs training images of at least 2 classes "
                        f"(got {len(train)} images, {int(train.labels.unique().numel())} classes)")
    if min(train.images.shape[2:]) < 2:
        raise UserError(f"d-vae needs images of at least 2x2 pixels, got {tuple(train.images.shape[2:])}")


def dvae_purification(settings: DVAESettings = DEFAULTS):
    """A ``prepare`` step: the two D-VAE stages; the dataset's meta records each stage's KL."""

    def prepare(train: ImageDataset, seed: int) -> ImageDataset:
        check_trainable(train)
        x, y = train.images.float().div(255), train.labels.to(train.images.device)
        report = {"settings": asdict(settings), "stages": []}
        for stage, target in enumerate(settings.kl_targets):
            stage_seed = seed * 2 + stage
            model, history = train_dvae(x, y, train.num_classes, target, settings, stage_seed)
            x, kl = purify(model, x, y, reconstruct=stage == 1, seed=stage_seed)
            x = to_uint8(x).float().div(255)     # the authors store each stage's images as uint8
            report["stages"].append({"kl_target": target, "kl": kl, "train_history": history})
        return train.with_images(to_uint8(x), dvae=report)

    return prepare


def dvae_defence(**settings) -> Defence:
    """The ``d-vae`` defence with these DVAESettings (defaults: the CPU ones)."""
    s = DVAESettings(**settings)
    return Defence(
        name="d-vae",
        summary=f"D-VAE: two stages of a rate-constrained VAE with a class-wise perturbation decoder "
                f"(KL targets {s.kl_targets}, latent {s.latent}, Adam lr {s.lr}; width {s.width}, "
                f"{s.epochs} epochs per stage{' for the CPU' if s == DEFAULTS else ''}) (Yu et al. 2024)",
        prepare=dvae_purification(s), params=asdict(s), build=dvae_defence)


register(dvae_defence())
