"""HYPO: hypocritical perturbations (Tao et al., "Better Safe Than Sorry: Preventing Delusive
Adversaries with Adversarial Training", NeurIPS 2021).

Error-*minimising* noise against a fixed, clean-pretrained model: PGD descends the
cross-entropy of the true label, so the poisoned images carry features that make them look
"too easy", and a model trained on them leans on those features instead of the real ones.
Unlike EM, the model is not updated while the noise is made.

Defaults from the authors' code (TLMichael/Delusive-Adversary): L_inf eps 8/255, 100 PGD
steps of eps/5 = 1.6/255 (poison.py), no random start; the crafting model is a standard model
trained to convergence on the clean data (main.py: 150 epochs), here an st_fast model trained
``epochs`` (150) with st_fast's NT trainer (cosine lr instead of the authors' step decay).
The APBench reimplementation (lafeat/apbench) uses 0.8/255 steps. ``augment`` (not in the
paper; off by default) crafts through a random crop + flip at every step, as TAP does.
"""

from __future__ import annotations

from .base import AttackOutput, register
from .surrogate import Augment, accuracy, craft_dataset, crop_padding, to_device

DEFAULTS = {"eps": 8 / 255, "step_size": 1.6 / 255, "steps": 100, "epochs": 150, "arch": "resnet18",
            "batch_size": 128, "augment": False}


@register("hypo", norm="linf", defaults=DEFAULTS, uses_model=True, trains_model=True, aliases=("hypocritical",),
          summary="error-minimising noise against a fixed clean-pretrained model")
def hypo_attack(ds, gen, device, *, eps, step_size, steps, epochs, arch, batch_size, augment,
                progress=False, fit_model):
    import torch

    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    model = fit_model(ds, arch, epochs, device, seed, progress=progress)
    x, y = to_device(ds, device)
    aug = Augment(crop_padding(ds), device, seed) if augment else None
    delta = craft_dataset(model, x, y, eps=eps, step_size=step_size, steps=int(steps),
                          batch_size=batch_size, gen=gen, augment=aug, progress=progress, name="hypo")
    info = {"surrogate_clean_acc": accuracy(model, x, y),
            "surrogate_poisoned_acc": accuracy(model, x, y, lambda i: delta[i])}
    return AttackOutput(delta.cpu(), info)
