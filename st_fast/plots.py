"""PNG plots of training runs (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .utils import atomic_path  # noqa: E402


def _save(fig, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def _finish(ax, xlabel: str, ylabel: str, title: str = "", unit_range: bool = False, fontsize=None) -> None:
    """The axis dressing every line plot here shares."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if unit_range:
        ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=fontsize)
    if title:
        ax.set_title(title)


def plot_accuracy(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Train and clean-test accuracy per epoch."""
    path = Path(path)
    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(epochs, [r["train_acc"] for r in history], "o-", label="train (as trained on)")
    ax.plot(epochs, [r["test_acc"] for r in history], "s-", label="clean test")
    _finish(ax, "epoch", "accuracy", title, unit_range=True)
    _save(fig, path)
    return path


def plot_curves(curves: dict[str, list[float]], path: str | Path, ylabel: str, title: str = "",
                xlabel: str = "epoch") -> Path:
    """Several named curves on one axis (e.g. test accuracy of NT vs ST-Full)."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    styles = [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-.")]  # identical curves stay visible
    for i, (name, ys) in enumerate(curves.items()):
        marker, line = styles[i % len(styles)]
        ax.plot(range(1, len(ys) + 1), ys, marker=marker, linestyle=line, label=name, markersize=4)
    _finish(ax, xlabel, ylabel, title)
    _save(fig, path)
    return path


def _check_x(checks: list[dict]) -> list[float]:
    """Fractional epoch of each check (a check at the end of epoch e sits at x = e)."""
    steps_per_epoch = max((c["step"] for c in checks), default=1) or 1
    return [c["epoch"] - 1 + c["step"] / steps_per_epoch for c in checks]


def _draw_run(ax_acm, ax_acc, history: list[dict], checks: list[dict], label: str = "", style=("o", "-")) -> None:
    """One run's ACM per check and test accuracy per epoch; rejected checks/states as red x."""
    marker, line = style
    prefix = f"{label}: " if label else ""
    x = _check_x(checks)
    ax_acm.plot(x, [c["acm"] for c in checks], marker=marker, linestyle=line, markersize=3, label=f"{prefix}ACM")
    rej = [(xi, c["acm"]) for xi, c in zip(x, checks) if not c["accepted"]]
    if rej:
        ax_acm.scatter(*zip(*rej), color="red", marker="x", s=60, zorder=3, label=f"{prefix}triggered: rolled back")
    epochs = [r["epoch"] for r in history]
    ax_acc.plot(epochs, [r["test_acc"] for r in history], marker=marker, linestyle=line, markersize=4,
                label=f"{prefix}clean test (kept state)")
    rej_acc = [(r["epoch"], r["test_acc_rejected"]) for r in history if r.get("test_acc_rejected") not in (None, "")]
    if rej_acc:
        ax_acc.scatter(*zip(*rej_acc), color="red", marker="x", s=60, zorder=3, label=f"{prefix}rejected state")


def plot_acm(history: list[dict], checks: list[dict], tau: float | None, path: str | Path,
             title: str = "") -> Path:
    """ACM at every check (rejected checks marked), with test accuracy per epoch beside it."""
    path = Path(path)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
    _draw_run(ax, ax2, history, checks)
    ax2.plot([r["epoch"] for r in history], [r["train_acc"] for r in history], "o--", alpha=0.6, label="train")
    if tau is not None:
        ax.axhline(tau, color="gray", ls="--", label=f"tau = {tau:g}")
    _finish(ax, "epoch", "ACM (ACM subset of the training set)")
    _finish(ax2, "epoch", "accuracy", unit_range=True)
    fig.suptitle(title)
    _save(fig, path)
    return path


def plot_run_comparison(runs: dict[str, tuple[list[dict], list[dict]]], path: str | Path,
                        title: str = "", tau: float | None = None) -> Path:
    """Several runs side by side: {label: (history, checks)} -> ACM per check | test accuracy
    (and, faint, training accuracy: the trap is train up while test falls)."""
    path = Path(path)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 3.8))
    styles = [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-.")]
    for i, (label, (history, checks)) in enumerate(runs.items()):
        _draw_run(ax, ax2, history, checks, label, styles[i % len(styles)])
        if all("train_acc" in r for r in history):
            ax2.plot([r["epoch"] for r in history], [r["train_acc"] for r in history], linestyle=styles[i % len(styles)][1],
                     color=ax2.lines[-1].get_color(), alpha=0.35, label=f"{label}: train")
    if tau is not None:
        ax.axhline(tau, color="gray", ls="--", label=f"tau = {tau:g}")
    _finish(ax, "epoch", "ACM (ACM subset of the training set)", fontsize=7)
    _finish(ax2, "epoch", "clean test accuracy", unit_range=True, fontsize=7)
    fig.suptitle(title)
    _save(fig, path)
    return path


def plot_multipliers(history: list[dict], unit_names: list[str], path: str | Path, title: str = "") -> Path:
    """Heatmap of the per-unit lr multiplier (rows: units shallow->deep, columns: epochs)."""
    import numpy as np

    path = Path(path)
    m = np.array([r["multipliers"] for r in history], dtype=float).T
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * m.shape[1] + 2), max(2.5, 0.22 * m.shape[0] + 1)))
    im = ax.imshow(m, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest",
                   extent=(0.5, m.shape[1] + 0.5, m.shape[0] - 0.5, -0.5))
    ax.set_yticks(range(len(unit_names)))
    ax.set_yticklabels(unit_names, fontsize=7 if len(unit_names) < 30 else 4)
    ax.set_xlabel("epoch")
    fig.colorbar(im, ax=ax, label="lr multiplier")
    ax.set_title(title)
    _save(fig, path)
    return path
