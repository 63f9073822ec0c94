"""ACM of any model on a probe set, read through a forward hook: ``st_fast.ACMMonitor``.

    monitor = st_fast.ACMMonitor(model, (images, labels), log_to="runs/acm")
    for epoch in range(epochs):
        train_one_epoch(...)
        reading = monitor.step()        # every ``every`` calls: one forward over the probe + ACM

What is read: the input of the model's last ``nn.Linear`` (the penultimate activations, what
ST's ACM reads) unless ``layer`` names a module, whose output is read instead (4-D outputs are
globally average-pooled to (B, C), as st_fast's units are). The probe runs in eval mode without
autograd; afterwards every module's train/eval flag is what it was and the hook is removed,
also when the forward fails. Images that are uint8 are scaled to [0, 1] floats (what
st_fast's loaders feed a model); float images go in as they are.

Each reading is a row (call, step, acm, acm_std, acm_values, decided, seconds, impl) kept in
``monitor.rows`` and, with ``log_to`` (a directory), written atomically to acm.csv, acm.json and
acm.png after every reading, and to TensorBoard (log_to/tensorboard) when
``torch.utils.tensorboard`` imports (or to the ``tensorboard=`` writer you pass).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import UserError

DECIDE_ON = ("mean", "lower")


def inference_batch_size(device: torch.device) -> int:
    # the engine's rule (st_fast.engine.Trainer.inference_batch_size): on the CPU batches of
    # 1000 spill the caches, and the same batch size gives the same bits as the engine's reading
    return 1000 if device.type == "cuda" else 128


@dataclass
class ACMReading:
    """One ACM measurement: the mean over ``repeats`` t-SNE seeds, their spread, and the value
    a decision uses (the mean, or its lower confidence bound)."""

    acm: float                 # mean over the repeats (the single reading when repeats=1)
    std: float                 # sample standard deviation over the repeats (0.0 when repeats=1)
    values: list[float]        # one reading per t-SNE seed
    decided: float             # what a threshold is compared with (see ``decision_value``)
    seconds: float
    impl: str                  # how the embedding ran ("exact/cpp-avx2", "none", ...)
    extra: dict = field(default_factory=dict)

    def __float__(self) -> float:
        return self.acm


def lower_bound(mean: float, std: float, k: int, confidence: float) -> float:
    """One-sided Student-t lower confidence bound of the mean of ``k`` readings."""
    if k < 2:
        return mean
    from scipy.stats import t

    return mean - float(t.ppf(confidence, k - 1)) * std / math.sqrt(k)


def decision_value(mean: float, std: float, k: int, decide_on: str, confidence: float) -> float:
    """``decide_on="mean"``: the mean; ``"lower"``: the lower bound (a trigger then fires only
    when ACM is above tau with that confidence, given the t-SNE noise of this reading)."""
    if decide_on == "mean":
        return mean
    return lower_bound(mean, std, k, confidence)


def check_decision(decide_on: str, confidence: float, repeats: int) -> None:
    if decide_on not in DECIDE_ON:
        raise UserError(f"decide_on must be one of {', '.join(DECIDE_ON)}, got {decide_on!r}")
    if not 0.5 <= confidence < 1:
        raise UserError(f"confidence must be in [0.5, 1), got {confidence!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise UserError(f"repeats must be an integer >= 1, got {repeats!r}")
    if decide_on == "lower" and repeats < 2:
        raise UserError("decide_on='lower' needs repeats >= 2 (a spread to bound the mean with)")


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def resolve_layer(model: nn.Module, layer: str | None) -> tuple[nn.Module, bool, str]:
    """(module, read its input?, name): the last nn.Linear's input by default, else the output
    of the module named ``layer`` (a name of ``model.named_modules()``)."""
    modules = dict(model.named_modules())
    if layer is None or layer == "penultimate":
        linears = [(n, m) for n, m in modules.items() if isinstance(m, nn.Linear)]
        if not linears:
            raise UserError("the model has no nn.Linear whose input is the penultimate layer; "
                            "pass layer= the name of the module to read")
        name, module = linears[-1]
        return module, True, f"input of {name}"
    if layer not in modules:
        known = ", ".join(n for n in modules if n)[:400]
        raise UserError(f"layer {layer!r} is not a module of the model; modules: {known}")
    return modules[layer], False, layer


def _pooled(t) -> torch.Tensor:
    if isinstance(t, (tuple, list)):
        t = t[0]
    if not isinstance(t, torch.Tensor):
        raise UserError(f"the ACM layer produced a {type(t).__name__}, not a tensor")
    t = t.detach()
    if t.dim() > 2:  # (B, C, H, W, ...) -> (B, C), as st_fast's unit_output does
        t = torch.flatten(nn.functional.adaptive_avg_pool2d(t, 1) if t.dim() == 4 else t.flatten(2).mean(2), 1)
    return t.float()


class Probe:
    """The probe set: (images, labels) tensors, or an iterable of (inputs, labels) batches."""

    def __init__(self, probe, batch_size: int | None = None):
        self.batch_size = batch_size
        if isinstance(probe, (tuple, list)) and len(probe) == 2 and isinstance(probe[0], torch.Tensor):
            images, labels = probe
            labels = torch.as_tensor(labels)
            if len(images) != len(labels):
                raise UserError(f"probe: {len(images)} images but {len(labels)} labels")
            if len(images) == 0:
                raise UserError("probe: the probe set is empty")
            self.images, self.labels, self.batches = images, labels.long(), None
        elif isinstance(probe, Iterable) and not isinstance(probe, (str, bytes, torch.Tensor)):
            self.images = self.labels = None
            self.batches = probe
        else:
            raise UserError("probe must be (images, labels) tensors or a DataLoader of (inputs, labels)")

    def __iter__(self):
        if self.batches is None:
            bs = self.batch_size or inference_batch_size(self.images.device)
            for i in range(0, len(self.images), bs):
                yield self.images[i:i + bs], self.labels[i:i + bs]
            return
        for batch in self.batches:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise UserError("probe loader must yield (inputs, labels) batches")
            yield batch[0], batch[1]


def as_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device)
    return x.float().div_(255) if x.dtype == torch.uint8 else x


@torch.no_grad()
def probe_features(model: nn.Module, probe: Probe, layer: str | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D) float32, labels (N,)) of ``probe`` at ``layer``; the model's train/eval
    flags are restored and the hook removed afterwards, whatever happens."""
    model = unwrap(model)
    module, read_input, _ = resolve_layer(model, layer)
    captured: list[torch.Tensor] = []
    if read_input:
        handle = module.register_forward_pre_hook(lambda _m, args: captured.append(_pooled(args[0])))
    else:
        handle = module.register_forward_hook(lambda _m, _a, out: captured.append(_pooled(out)))
    modes = [(m, m.training) for m in model.modules()]
    device = model_device(model)
    labels = []
    try:
        model.eval()
        for x, y in probe:
            before = len(captured)
            model(as_input(x, device))
            if len(captured) != before + 1:
                raise UserError(f"the ACM layer ran {len(captured) - before} times in one forward; "
                                "pick a module that runs exactly once")
            labels.append(torch.as_tensor(y).to(captured[-1].device).long())
    finally:
        handle.remove()
        for m, training in modes:
            m.training = training
    if not captured:
        raise UserError("probe: the probe set is empty")
    return torch.cat(captured), torch.cat(labels)


def read_acm(features: torch.Tensor, labels: torch.Tensor, *, embedding, radius, backend, seed,
             classes, repeats, decide_on, confidence, tsne_options=None) -> ACMReading:
    """st_fast.acm over ``repeats`` seeds and the value a decision uses."""
    from .cluster import acm

    t0 = time.perf_counter()
    stats = acm(features, labels, embedding=embedding, radius=radius, backend=backend, seed=seed,
                classes=classes, repeats=repeats, return_stats=True, tsne_options=tsne_options)
    mean, std, values = float(stats), float(stats.std), [float(v) for v in stats.values]
    return ACMReading(mean, std, values, decision_value(mean, std, len(values), decide_on, confidence),
                      time.perf_counter() - t0, stats.implementation)


class ACMMonitor:
    """ACM of ``model`` on ``probe`` every ``every`` calls of :meth:`step` (or on demand with
    :meth:`measure`), recorded per call; see the module docstring."""

    def __init__(self, model: nn.Module, probe, every: int = 1, layer: str | None = None,
                 embedding: str | None = "tsne", log_to: str | Path | None = None, *,
                 radius: str = "mean", backend: str = "auto", seed: int = 0, classes=None,
                 repeats: int = 1, decide_on: str = "mean", confidence: float = 0.95,
                 batch_size: int | None = None, tensorboard="auto", tsne_options: dict | None = None):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise UserError(f"every must be an integer >= 1, got {every!r}")
        check_decision(decide_on, confidence, repeats)
        self.model, self.probe, self.every, self.layer = model, Probe(probe, batch_size), every, layer
        resolve_layer(unwrap(model), layer)  # a wrong layer name fails now, not after an epoch
        self.options = dict(embedding=embedding, radius=radius, backend=backend, seed=seed,
                            classes=classes, repeats=repeats, decide_on=decide_on,
                            confidence=confidence, tsne_options=tsne_options)
        self.log_to = Path(log_to) if log_to is not None else None
        if self.log_to is not None:
            from .files import check_writable

            check_writable(self.log_to, "ACM log")
        self.writer = _tensorboard_writer(tensorboard, self.log_to)
        self.calls = 0
        self.rows: list[dict] = []

    def measure(self) -> ACMReading:
        """One reading now: one forward over the probe set plus ACM (no logging)."""
        t0 = time.perf_counter()
        feats, labels = probe_features(self.model, self.probe, self.layer)
        reading = read_acm(feats, labels, **self.options)
        reading.seconds = time.perf_counter() - t0
        return reading

    def step(self, step: int | None = None) -> ACMReading | None:
        """Count a call; on every ``every``-th, measure, record and log. ``step``: the x value
        logged (default: the call number)."""
        self.calls += 1
        if self.calls % self.every:
            return None
        reading = self.measure()
        self.record(reading, self.calls if step is None else step)
        return reading

    __call__ = step

    def record(self, reading: ACMReading, step: int) -> dict:
        row = {"call": self.calls, "step": step, "acm": reading.acm, "acm_std": reading.std,
               "acm_values": reading.values, "decided": reading.decided,
               "seconds": reading.seconds, "impl": reading.impl, **reading.extra}
        self.rows.append(row)
        if self.writer is not None:
            self.writer.add_scalar("acm/mean", reading.acm, step)
            if len(reading.values) > 1:
                self.writer.add_scalar("acm/std", reading.std, step)
        if self.log_to is not None:
            write_log(self.rows, self.log_to)
        return row


def write_log(rows: list[dict], out: Path) -> None:
    from .files import atomic_write_json, atomic_write_text, rows_to_csv

    atomic_write_json(out / "acm.json", rows)
    flat = [{**r, "acm_values": " ".join(f"{v:.6g}" for v in r["acm_values"])} for r in rows]
    atomic_write_text(out / "acm.csv", rows_to_csv(flat))
    plot_curve(rows, out / "acm.png")


def plot_curve(rows: list[dict], path: Path) -> None:
    """ACM per reading with its spread (mean +- std over the t-SNE seeds)."""
    from .files import atomic_path
    from .plots import plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    steps = [r["step"] for r in rows]
    mean = [r["acm"] for r in rows]
    std = [r["acm_std"] for r in rows]
    ax.errorbar(steps, mean, yerr=std if any(std) else None, marker="o", capsize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("ACM")
    ax.grid(alpha=0.3)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def _tensorboard_writer(tensorboard, log_to: Path | None):
    """A SummaryWriter: the one passed, a new one under log_to when "auto" and TensorBoard
    imports, else None."""
    if tensorboard is None or tensorboard is False:
        return None
    if tensorboard not in ("auto", True):
        if not hasattr(tensorboard, "add_scalar"):
            raise UserError("tensorboard= must be 'auto', True, False or a SummaryWriter")
        return tensorboard
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if tensorboard is True:
            raise UserError("tensorboard=True needs TensorBoard: pip install 'st_fast[tensorboard]'") from None
        return None
    if log_to is None:
        if tensorboard is True:
            raise UserError("tensorboard=True needs log_to= (the directory its events go to)")
        return None
    return SummaryWriter(str(log_to / "tensorboard"))
