"""`st-fast acm`: ACM of saved activations (.npy or .pt), optionally with a t-SNE scatter plot."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser(
        "acm",
        help="Activation Cluster Measurement of saved features and labels",
        description="Prints the ACM of FEATURES (N, D) grouped by LABELS (N,), both saved as "
        ".npy or .pt (a tensor, or a dict holding one), and the time each stage took.",
    )
    p.add_argument("--features", required=True, help="(N, D) array: .npy or .pt")
    p.add_argument("--labels", required=True, help="(N,) integer array: .npy or .pt")
    p.add_argument(
        "--embedding", choices=["tsne", "pca", "none"], default="tsne",
        help="2-D t-SNE (default), 2-D PCA or the raw features",
    )  # fmt: skip
    p.add_argument(
        "--classes", default=None,
        help="K (the first K classes) or a comma-separated list of labels; default: all",
    )  # fmt: skip
    p.add_argument("--radius", choices=["mean", "rms", "max"], default="mean", help="class radius r_k")
    p.add_argument(
        "--backend", choices=["auto", "exact", "cuml", "opentsne", "sklearn"], default="auto",
        help="t-SNE backend (auto: the fastest available here)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the t-SNE / PCA")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, or auto")
    p.add_argument("--plot", metavar="PNG", help="write a scatter of the 2-D embedding here")
    p.set_defaults(func=run)


def load_array(path: str, what: str):
    """A tensor from .npy / .pt (a tensor, an array, or a dict with exactly one of them)."""
    import numpy as np
    import torch

    from ..files import load_torch_file

    file = Path(path)
    if not file.is_file():
        raise UserError(f"{what} file not found: {path}")
    suffix = file.suffix.lower()
    try:
        if suffix == ".npy":
            return torch.from_numpy(np.load(file, allow_pickle=False))
        if suffix in (".pt", ".pth"):
            obj = load_torch_file(file, f"{what} file")
        else:
            raise UserError(f"{what} must be a .npy or .pt file, got {file.name}")
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"could not read {what} from {path}: {str(err).splitlines()[0][:200]}") from None
    if isinstance(obj, dict):
        arrays = [v for v in obj.values() if isinstance(v, (torch.Tensor, np.ndarray))]
        if len(arrays) != 1:
            raise UserError(f"{path} holds a dict; it must contain exactly one tensor")
        obj = arrays[0]
    if not isinstance(obj, (torch.Tensor, np.ndarray)):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a tensor or array")
    return torch.as_tensor(obj)


def parse_classes(text: str | None):
    if text is None:
        return None
    try:
        parts = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(
            f"--classes must be K or a comma-separated list of ints, got {text!r}"
        ) from None
    return parts[0] if len(parts) == 1 and "," not in text else parts


def plot_embedding(stats, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..utils import atomic_path

    emb = stats.embedding.float().cpu()
    if emb.shape[1] != 2:
        raise UserError("--plot needs a 2-D embedding (--embedding tsne or pca)")
    labels = stats.classes
    cls = stats.row_class.cpu()
    fig, ax = plt.subplots(figsize=(6, 6), dpi=120)
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    for k, label in enumerate(labels):
        pts = emb[cls == k]
        ax.scatter(pts[:, 0], pts[:, 1], s=6, color=cmap(k % cmap.N), label=str(label))
    ax.set_title(f"{stats.embedding_kind} ({stats.backend}), ACM = {stats.acm:.3f}")
    ax.set_xticks([])
    ax.set_yticks([])
    if len(labels) <= 20:
        ax.legend(markerscale=2, fontsize=7, loc="best")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    from ..cluster import acm
    from ..utils import resolve_device

    features = load_array(args.features, "features")
    labels = load_array(args.labels, "labels")
    device = resolve_device(args.device)
    stats = acm(
        features.to(device),
        labels.to(device),
        embedding=None if args.embedding == "none" else args.embedding,
        classes=parse_classes(args.classes),
        radius=args.radius,
        backend=args.backend,
        seed=args.seed,
        return_stats=True,
    )
    print(f"ACM = {stats.acm:.6f}")
    impl = f" ({stats.tsne_impl})" if stats.tsne_impl not in (None, "-") else ""
    backend = f", backend {stats.backend}{impl}" if args.embedding == "tsne" else ""
    times = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in stats.timings.items())
    print(
        f"{len(stats.classes)} classes, {stats.embedding.shape[0]} samples, "
        f"embedding {stats.embedding_kind}{backend}, radius {stats.radius}; {times}"
    )
    if args.plot:
        plot_embedding(stats, args.plot)
        print(f"plot written to {args.plot}")
    return 0
