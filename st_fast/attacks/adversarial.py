"""TAP / AEP: targeted adversarial poisoning (Fowl et al., "Adversarial Examples Make Strong
Poisons", NeurIPS 2021).

A surrogate is trained on the clean data; then every training image gets L_inf-bounded noise
that makes the surrogate classify it as another class (class y -> (y + shift) mod K, the
paper's fixed permutation), by PGD on the cross-entropy to that target, with differentiable
random crop + flip inside every step. Training on such images teaches features that point to
the wrong class, so accuracy on clean test data collapses (below chance for the targeted
version).

Defaults: eps 8/255, 250 PGD steps, surrogate ResNet-18 trained 40 epochs on clean data
(the paper); step size 0.1 * eps with x0.1 decay at 3/8, 5/8 and 7/8 of the steps (the
schedule of the authors' poisoning framework; the exact step size there is expressed
differently and is our reading). With few steps the decay leaves almost no full-size steps
(5 steps: one), so small budgets should pass ``decay=False``.
"""

from __future__ import annotations

from .base import AttackOutput, register
from .surrogate import Augment, accuracy, craft_dataset, crop_padding, to_device

DEFAULTS = {"eps": 8 / 255, "step_size": 0.8 / 255, "steps": 250, "epochs": 40, "arch": "resnet18",
            "shift": 1, "batch_size": 128, "augment": True, "decay": True}


@register("tap", norm="linf", defaults=DEFAULTS, uses_model=True, trains_model=True, aliases=("aep", "adversarial-poison"),
          summary="targeted adversarial poisons against a clean-trained surrogate")
def tap_attack(ds, gen, device, *, eps, step_size, steps, epochs, arch, shift, batch_size, augment,
               decay, progress=False, fit_model):
    import torch

    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    model = fit_model(ds, arch, epochs, device, seed, progress=progress)
    x, y = to_device(ds, device)
    targets = (y + int(shift)) % ds.num_classes
    aug = Augment(crop_padding(ds), device, seed) if augment else None
    delta = craft_dataset(model, x, targets, eps=eps, step_size=step_size, steps=int(steps),
                          batch_size=batch_size, gen=gen, augment=aug,
                          decay_at=(3 / 8, 5 / 8, 7 / 8) if decay else (),
                          random_start=True, progress=progress, name="tap")
    info = {"surrogate_clean_acc": accuracy(model, x, y),
            "surrogate_target_acc": accuracy(model, x, targets, lambda i: delta[i])}
    return AttackOutput(delta.cpu(), info)
