"""Error-minimising noise: EM sample-wise and class-wise (Huang et al., "Unlearnable Examples:
Making Personal Data Unexploitable", ICLR 2021) and REM (Fu et al., "Robust Unlearnable
Examples: Protecting Data Against Adversarial Learning", ICLR 2022).

EM solves min_theta min_delta L(f_theta(x + delta), y) by alternating: ``train_steps`` SGD
steps of the surrogate on the perturbed data, then ``steps`` sign-PGD steps that *decrease* the
loss for every sample (or, class-wise, one perturbation per class), repeated until the
surrogate's accuracy on the perturbed data exceeds ``stop_acc``. Defaults from the paper and
the authors' scripts (HanxunH/Unlearnable-Examples: perturbation.py and the CIFAR-10
min-min scripts): L_inf eps 8/255, sample-wise 20 steps of 0.8/255 from a zero start,
class-wise 1 step per batch, 10 training steps per round on batches of 512 with the gradient
norm clipped at 5, stop at 99%, ResNet-18, SGD lr 0.1 momentum 0.9 weight decay 5e-4.

REM makes the noise survive adversarial training: min_theta min_delta_u E_T max_delta_a
L(f(T(x + delta_u) + delta_a), y). The surrogate is trained adversarially (radius ``adv_eps``),
and every ``perturb_freq`` training steps the noise of the current batch gets ``steps``
sign-PGD steps that decrease the loss averaged over ``samples`` random crops/flips T, each
followed by its own inner PGD maximisation. After ``train_steps`` steps the noise of every
sample is computed once more against the final surrogate. Each noise update starts from a
uniform random point of the eps-ball (the authors' ``--pgd-random-start``), not from the
previous noise. Defaults from the authors' CIFAR-10 script (fshp971/robust-unlearnable-examples,
scripts/cifar10/gen_rem.sh): eps 8/255, 10 steps of 1.6/255, adversarial radius 4/255 with 10
steps of 0.8/255, 5 transformation samples, 5000 training steps of batch 128, the batch's noise
updated at every step (``--perturb-freq`` is not passed, its default is 1), lr 0.1 decayed
x0.1 every 2000 steps, ResNet-18.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import surrogate as sg
from .base import AttackOutput, register
from .cg_eot import Compose
from .surrogate import Augment, Ticker, accuracy, batches, build_surrogate, linf_pgd, sgd, to_device

EM_DEFAULTS = {"eps": 8 / 255, "step_size": 0.8 / 255, "steps": 20, "train_steps": 10,
               "stop_acc": 0.99, "max_rounds": 50, "arch": "resnet18", "lr": 0.1, "batch_size": 512,
               "grad_clip": 5.0, "random_start": False, "augment": False, "bn_refresh": False}
# augment (not in the paper; off by default): the surrogate's training steps see a random
# crop + flip of x + delta and every PGD step descends the loss of a random crop + flip
# (expectation over transformations with one sample per step, as REM does), so the noise
# survives the crop/flip that natural training applies (see docs/attacks.md, Fashion-MNIST).
# bn_refresh (not in the paper; off by default): before each noise pass, recompute the
# surrogate's BatchNorm statistics on the current poisoned data (surrogate.refresh_bn), so the
# eval-mode model the noise and the stop criterion see is the model just trained.
# class-wise: one PGD step per batch (the authors' class-wise script); fit_samples: optimise the
# class perturbations on this many seeded samples (None: all), then apply them to every sample
# of the class (a budget knob; the paper uses all)
EM_CLASS_DEFAULTS = {**EM_DEFAULTS, "steps": 1, "fit_samples": None}


def _em(ds, gen, device, classwise: bool, *, eps, step_size, steps, train_steps, stop_acc,
        max_rounds, arch, lr, batch_size, grad_clip, random_start, augment, bn_refresh,
        fit_samples=None, progress=False, transform=None, surrogate=None):
    """The EM loop. ``transform`` (the adaptive attacks, st_fast.attacks.adaptive): a
    differentiable transformation applied after crop/flip wherever EM sees the poisoned data
    (training steps, BatchNorm refresh, every PGD step); ``surrogate``: an object that owns
    the surrogate's optimiser and may roll a round back (em-a's ST-trained surrogate)."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    x_all, y_all = to_device(ds, device)
    x, y = x_all, y_all
    if classwise and fit_samples and int(fit_samples) < len(ds):
        pick = torch.randperm(len(ds), generator=gen)[: int(fit_samples)].to(device)
        x, y = x_all[pick], y_all[pick]
    model = build_surrogate(ds, arch, device, seed)
    opt = surrogate.optimizer(model, lr) if surrogate is not None else sgd(model, lr)
    aug = Augment(sg.crop_padding(ds), device, seed) if augment else None
    if transform is not None:
        aug = Compose(aug, transform)
    rows = ds.num_classes if classwise else len(ds)
    # the authors' scripts start from zero; random_start: uniform in the eps-ball
    delta = torch.zeros((rows, *x.shape[1:]))
    if random_start:
        delta = (torch.rand(delta.shape, generator=gen) * 2 - 1) * eps
    delta = delta.to(device)

    def delta_of(idx):
        return delta[y[idx]] if classwise else delta[idx.to(delta.device)]

    rounds, acc = 0, 0.0
    # max_rounds is an upper bound (the surrogate may reach stop_acc before), and so is the ETA
    tick = Ticker(progress, f"em-{'class' if classwise else 'sample'}", int(max_rounds), "round", lines=int(max_rounds))
    for rounds in range(1, int(max_rounds) + 1):
        if surrogate is not None:
            surrogate.before_round(model, opt)
        sg.train_steps(model, opt, x, y, delta_of, int(train_steps), batch_size, gen, augment=aug,
                       grad_clip=grad_clip)
        if surrogate is not None:
            surrogate.after_round(model, opt, x, y, delta_of, rounds)
        if bn_refresh:
            sg.refresh_bn(model, x, delta_of, batch_size, aug)
        model.eval()
        for idx in batches(len(x), batch_size, gen):
            idx_d = idx.to(device)
            xb, yb = x[idx_d], y[idx_d]
            if classwise:
                _classwise_step(model, xb, yb, delta, eps, step_size, steps, aug)
            else:
                delta[idx_d] = linf_pgd(model, xb, yb, delta[idx_d], eps=eps, step_size=step_size,
                                        steps=steps, descend=True, loss_fn=_loss(aug))
        acc = accuracy(model, x, y, delta_of)
        tick(rounds, f"surrogate acc on poisoned data {acc:.4f} (stops above {stop_acc:g})")
        if acc > stop_acc:
            break
    out = delta[y_all] if classwise else delta
    out = (x_all + out).clamp(0, 1) - x_all
    info = {"rounds": rounds, "surrogate_acc": acc, "stopped": acc > stop_acc}
    if surrogate is not None:
        info["st"] = surrogate.summary()
    return AttackOutput(out.cpu(), info)


def _loss(aug: Augment | None):
    """Cross-entropy of the model on x + delta, or on a random crop/flip of it."""
    if aug is None:
        return None
    return lambda m, xa, ya: F.cross_entropy(m(aug(xa)), ya)


def _classwise_step(model, xb, yb, delta, eps, step_size, steps, aug: Augment | None = None):
    """PGD on the class perturbations: each class's step follows the sign of the summed
    gradient of its samples in the batch (classes absent from the batch stay put)."""
    loss_fn = _loss(aug) or (lambda m, xa, ya: F.cross_entropy(m(xa), ya))
    for _ in range(steps):
        d = delta[yb].detach().requires_grad_(True)
        loss = loss_fn(model, (xb + d).clamp(0, 1), yb)
        (g,) = torch.autograd.grad(loss, [d])
        with torch.no_grad():
            per_class = torch.zeros_like(delta).index_add_(0, yb, g)
            present = torch.zeros(len(delta), dtype=torch.bool, device=delta.device)
            present[yb] = True
            delta[present] = (delta[present] - step_size * per_class[present].sign()).clamp(-eps, eps)


@register("em-sample", norm="linf", defaults=EM_DEFAULTS, uses_model=True,
          aliases=("em", "em-samplewise", "unlearnable"),
          summary="error-minimising noise, one per sample (bi-level min-min)")
def em_sample_attack(ds, gen, device, **p):
    return _em(ds, gen, device, False, **p)


@register("em-class", norm="linf", defaults=EM_CLASS_DEFAULTS, uses_model=True,
          aliases=("em-classwise",), summary="error-minimising noise, one per class (bi-level min-min)")
def em_class_attack(ds, gen, device, **p):
    return _em(ds, gen, device, True, **p)


# ---------------------------------------------------------------- REM

REM_DEFAULTS = {"eps": 8 / 255, "step_size": 1.6 / 255, "steps": 10, "adv_eps": 4 / 255,
                "adv_step_size": 0.8 / 255, "adv_steps": 10, "samples": 5, "train_steps": 5000,
                "perturb_freq": 1, "arch": "resnet18", "lr": 0.1, "lr_decay_rate": 0.1,
                "lr_decay_freq": 2000, "batch_size": 128}


def rem_noise_step(model, xb, yb, delta, augment: Augment, *, eps, step_size, steps, adv_eps,
                   adv_step_size, adv_steps, samples):
    """``steps`` descent steps on ``delta`` (this batch's noise, starting where it is given) of
    E_T[max_{|a| <= adv_eps} L(f(T(x + delta) + a), y)] (the max by inner PGD, held fixed
    while differentiating w.r.t. delta)."""
    delta = ((xb + delta.detach()).clamp(0, 1) - xb).clone()
    for _ in range(steps):
        delta.requires_grad_(True)
        grad = torch.zeros_like(delta)
        for _ in range(samples):
            xt = augment((xb + delta).clamp(0, 1))
            a = torch.empty_like(xt).uniform_(-adv_eps, adv_eps)
            a = linf_pgd(model, xt.detach(), yb, a, eps=adv_eps, step_size=adv_step_size,
                         steps=adv_steps, descend=False)
            loss = F.cross_entropy(model((xt + a).clamp(0, 1)), yb)
            grad += torch.autograd.grad(loss, [delta])[0]
        with torch.no_grad():
            delta = (delta - step_size * grad.sign()).clamp(-eps, eps)
            delta = (xb + delta).clamp(0, 1) - xb
    return delta.detach()


@register("rem", norm="linf", defaults=REM_DEFAULTS, uses_model=True, aliases=("robust-em",),
          summary="robust error-minimising noise (min-min-max with expectation over transformations)")
def rem_attack(ds, gen, device, *, eps, step_size, steps, adv_eps, adv_step_size, adv_steps, samples,
               train_steps, perturb_freq, arch, lr, lr_decay_rate, lr_decay_freq, batch_size,
               progress=False, transform=None):
    """REM; ``transform`` (rem-t): applied after the crop/flip in every T of the EOT and in the
    surrogate's training batches."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    x, y = to_device(ds, device)
    model = build_surrogate(ds, arch, device, seed)
    opt = sgd(model, lr)
    augment = Augment(sg.crop_padding(ds), device, seed)
    if transform is not None:
        augment = Compose(augment, transform)
    delta = torch.zeros_like(x)
    kw = dict(eps=eps, step_size=step_size, steps=steps, adv_eps=adv_eps, adv_step_size=adv_step_size,
              adv_steps=adv_steps, samples=samples)

    def new_noise(idx):
        # every update starts from a fresh uniform point of the eps-ball (authors' --pgd-random-start)
        start = ((torch.rand((len(idx), *x.shape[1:]), generator=gen) * 2 - 1) * eps).to(device)
        return rem_noise_step(model, x[idx], y[idx], start, augment, **kw)

    def adversary(m, xb, yb):
        m.eval()
        a = torch.empty_like(xb).uniform_(-adv_eps, adv_eps)
        return (xb + linf_pgd(m, xb, yb, a, eps=adv_eps, step_size=adv_step_size, steps=adv_steps,
                              descend=False)).clamp(0, 1)

    tick = Ticker(progress, "rem", int(train_steps))
    for step in range(int(train_steps)):
        for group in opt.param_groups:   # step decay, as the authors' script
            group["lr"] = lr * lr_decay_rate ** (step // int(lr_decay_freq))
        idx = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=gen).to(device)
        if step % int(perturb_freq) == 0:
            model.eval()
            delta[idx] = new_noise(idx)
        model.train()
        xb = augment((x[idx] + delta[idx]).clamp(0, 1))
        xb = adversary(model, xb, y[idx])
        model.train()
        loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tick(step + 1, f"loss {float(loss.detach()):.3f}")
    model.eval()
    final = Ticker(progress, "rem final noise", -(-len(x) // batch_size), "batch")
    for b, idx in enumerate(batches(len(x), batch_size, gen, shuffle=False)):
        delta[idx.to(device)] = new_noise(idx.to(device))
        final(b + 1)
    acc = accuracy(model, x, y, lambda i: delta[i])
    return AttackOutput(delta.cpu(), {"surrogate_acc": acc})
