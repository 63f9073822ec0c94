"""Tables and plots from finished benchmark cells (also `st-fast report`)."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from ..errors import UserError
from ..utils import atomic_write_text


def collect_results(dirs: list[str | Path]) -> list[dict]:
    """result.json of every finished cell under each dir (a bench dir or a single cell dir)."""
    results = []
    for d in map(Path, dirs):
        if not d.exists():
            raise UserError(f"{d}: no such run directory")
        found = sorted(d.glob("cells/*/result.json")) + sorted(d.glob("result.json"))
        results += [json.loads(p.read_text()) for p in found]
    return results


def _mean_std(xs: list[float]) -> str:
    if not xs:
        return ""
    m = statistics.fmean(xs) * 100
    if len(xs) == 1:
        return f"{m:.2f}"
    return f"{m:.2f} ± {statistics.stdev(xs) * 100:.2f}"


def select_by_validation(results: list[dict], select: dict[str, list[str]]) -> list[dict]:
    """Pseudo-cells: for each (dataset, arch, ratio, attack, seed) and each selection name, the
    candidate defence with the best accuracy on the clean validation images (first on ties).
    The test accuracy of the chosen run is reported; the test set played no part in the choice."""
    out = []
    for name, among in select.items():
        groups = defaultdict(dict)
        for r in results:
            if r["defence"] in among and r.get("val_acc") is not None:
                groups[(r.get("dataset"), r["arch"], r["ratio"], r["attack"], r["seed"])][r["defence"]] = r
        for runs in groups.values():
            if set(runs) != set(among):
                continue  # choose only once every candidate has finished
            best = max(among, key=lambda d: runs[d]["val_acc"])
            out.append({**runs[best], "defence": name, "chosen": best})
    return out


def _grid(attacks: list[str], defences: list[str], cell: dict, fmt) -> list[str]:
    """Markdown rows: one per attack, one column per defence, ``fmt(runs)`` in each cell."""
    lines = ["| train data | " + " | ".join(defences) + " |", "|---|" + "---|" * len(defences)]
    for a in attacks:
        lines.append(f"| {a} | " + " | ".join(fmt(cell[(a, d)]) if cell.get((a, d)) else "–"
                                              for d in defences) + " |")
    return lines + [""]


def markdown_tables(results: list[dict], select: dict | None = None) -> str:
    """One table per (dataset, arch, ratio): rows = training data, columns = defences.

    Each cell: final clean test accuracy (%) mean ± std over seeds, then the peak over epochs
    in brackets (an oracle: it peeks at the test set, so it is never used to pick anything).
    """
    chosen = select_by_validation(results, select or {})
    results = results + chosen
    groups = defaultdict(list)
    for r in results:
        groups[(r.get("dataset", "?"), r["arch"], r["ratio"])].append(r)
    out = []
    for (dataset, arch, ratio), rs in sorted(groups.items()):
        attacks = list(dict.fromkeys(r["attack"] for r in rs))
        defences = list(dict.fromkeys(r["defence"] for r in rs))
        cell = defaultdict(list)
        for r in rs:
            cell[(r["attack"], r["defence"])].append(r)
        seeds = sorted({r["seed"] for r in rs})
        out.append(f"### {dataset}, {arch}, protection ratio {ratio:g} (seeds {', '.join(map(str, seeds))})\n")
        out.append("Clean test accuracy %: final, mean ± std over seeds [peak over epochs: oracle, "
                   "never used for selection]\n")
        out += _grid(attacks, defences, cell, lambda c: (
            f"{_mean_std([x['final_test_acc'] for x in c])} "
            f"[{_mean_std([x['peak_test_acc_oracle'] for x in c])}]"))
        out.append("Wall time per run (s, mean) and rollbacks (mean):\n")
        out += _grid(attacks, defences, cell, lambda c: (
            f"{statistics.fmean(x['wall_s'] for x in c):.0f} s, "
            f"{statistics.fmean(x['rollbacks'] for x in c):.1f} rb"))
    if chosen:
        out.append("Validation-selected columns (chosen per attack and seed on the clean validation "
                   "images):\n")
        for name in select:
            picks = defaultdict(list)
            for r in chosen:
                if r["defence"] == name:
                    picks[r["attack"]].append(r["chosen"])
            out += [f"- {name}: " + "; ".join(f"{a}: {', '.join(p)}" for a, p in picks.items())]
        out.append("")
    return "\n".join(out)


def summary_table(results: list[dict], columns: list[str], select: dict | None = None) -> str:
    """Markdown: final clean test accuracy (%), mean ± std over seeds, of ``columns`` only, one
    row per attack (for each dataset, arch and ratio); the compact view of a wide matrix."""
    results = results + select_by_validation(results, select or {})
    groups = defaultdict(list)
    for r in results:
        groups[(r.get("dataset", "?"), r["arch"], r["ratio"])].append(r)
    out = []
    for (dataset, arch, ratio), rs in sorted(groups.items()):
        cell = defaultdict(list)
        for r in rs:
            cell[(r["attack"], r["defence"])].append(r)
        seeds = sorted({r["seed"] for r in rs})
        out.append(f"Final clean test accuracy %, mean ± std over seeds {', '.join(map(str, seeds))} "
                   f"({dataset}, {arch}, protection ratio {ratio:g}):\n")
        out += _grid(list(dict.fromkeys(r["attack"] for r in rs)), columns, cell,
                     lambda c: _mean_std([x["final_test_acc"] for x in c]))
    return "\n".join(out)


def paired_differences(results: list[dict], pairs: list[tuple[str, str]], select: dict | None = None) -> str:
    """Markdown: for each pair (A, B) and attack, final accuracy of A minus B in points, paired
    by seed (same poison, same initialisation): mean ± std, how many seeds A won / tied / lost."""
    results = results + select_by_validation(results, select or {})
    final = {(r["attack"], r["defence"], r["seed"], r["arch"], r["ratio"]): r["final_test_acc"] for r in results}
    attacks = list(dict.fromkeys(r["attack"] for r in results))
    lines = ["Paired differences (final clean test accuracy, points; same attack, seed, arch, ratio):\n",
             "| A − B | " + " | ".join(attacks) + " |", "|---|" + "---|" * len(attacks)]
    for a, b in pairs:
        row = []
        for attack in attacks:
            d = [100 * (final[k] - final[(attack, b, *k[2:])]) for k in final
                 if k[0] == attack and k[1] == a and (attack, b, *k[2:]) in final]
            if not d:
                row.append("–")
                continue
            spread = f" ± {statistics.stdev(d):.1f}" if len(d) > 1 else ""
            won, tied = sum(x > 0.05 for x in d), sum(abs(x) <= 0.05 for x in d)
            mean = round(statistics.fmean(d), 1) + 0.0  # no "-0.0"
            row.append(f"{mean:+.1f}{spread} ({won}/{tied}/{len(d) - won - tied})")
        lines.append(f"| {a} − {b} | " + " | ".join(row) + " |")
    return "\n".join(lines + ["", "In brackets: seeds where A won / tied (within 0.05) / lost.", ""])


def results_csv(results: list[dict]) -> str:
    from ..trainer import rows_to_csv

    def flat(r: dict) -> dict:  # nested dicts (machine) become machine.cpu, machine.torch, ...
        out = {}
        for k, v in r.items():
            if isinstance(v, dict):
                out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
            elif k != "test_acc_curve":
                out[k] = v
        return out

    return rows_to_csv([flat(r) for r in results])


def write_reports(results: list[dict], out: str | Path, select: dict | None = None,
                  pairs: list[tuple[str, str]] | None = None, summary: list[str] | None = None) -> None:
    """results.jsonl/.csv/.md and plots. In a bench dir, its bench.yaml gives the selections, the
    row/column order and (unless passed here) the summary columns and paired tables."""
    from .config import parse_pair

    out = Path(out)
    if (out / "bench.yaml").exists():
        import yaml

        bench = yaml.safe_load((out / "bench.yaml").read_text()) or {}
        select = select if select is not None else bench.get("select") or {}
        extras = bench.get("report") or {}
        summary = summary or extras.get("summary")
        pairs = pairs or [parse_pair(p) for p in extras.get("paired", [])]
        rank = {name: i for i, name in enumerate(bench.get("attacks", []) + bench.get("defences", []))}
        results = sorted(results, key=lambda r: (rank.get(r["attack"], 1e9), rank.get(r["defence"], 1e9), r["seed"]))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in results))
    if not results:
        return
    atomic_write_text(out / "results.csv", results_csv(results))
    md = markdown_tables(results, select)
    if summary:
        md = summary_table(results, summary, select) + "\n" + md
    if pairs:
        md += "\n" + paired_differences(results, pairs, select)
    atomic_write_text(out / "results.md", md)
    plot_results(results, out / "plots")
    plot_checks(results, out, select or {})


def plot_results(results: list[dict], plot_dir: Path) -> None:
    """Per attack: mean clean test accuracy per epoch of each defence; and a heatmap of finals."""
    import numpy as np

    from ..plots import _save, plt

    by_attack = defaultdict(lambda: defaultdict(list))
    for r in results:
        by_attack[r["attack"]][r["defence"]].append(r["test_acc_curve"])
    for attack, per_def in by_attack.items():
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        for d, curves in per_def.items():
            n = min(len(c) for c in curves)
            mean = np.mean([c[:n] for c in curves], axis=0)
            ax.plot(range(1, n + 1), mean, "o-", markersize=3, label=f"{d} (n={len(curves)})")
        ax.set_xlabel("epoch")
        ax.set_ylabel("clean test accuracy (mean over seeds)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(f"training data: {attack}")
        _save(fig, plot_dir / f"curves-{attack}.png")
    attacks = list(dict.fromkeys(r["attack"] for r in results))
    defences = list(dict.fromkeys(r["defence"] for r in results))
    grid = np.full((len(attacks), len(defences)), np.nan)
    for i, a in enumerate(attacks):
        for j, d in enumerate(defences):
            v = [r["final_test_acc"] for r in results if r["attack"] == a and r["defence"] == d]
            if v:
                grid[i, j] = np.mean(v)
    fig, ax = plt.subplots(figsize=(1.1 * len(defences) + 2, 0.5 * len(attacks) + 1.5))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(defences)))
    ax.set_xticklabels(defences, rotation=45, ha="right")
    ax.set_yticks(range(len(attacks)))
    ax.set_yticklabels(attacks)
    for i in range(len(attacks)):
        for j in range(len(defences)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j] * 100:.0f}", ha="center", va="center",
                        color="white" if grid[i, j] < 0.6 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, label="final clean test accuracy")
    ax.set_title("final clean test accuracy (mean over seeds)")
    _save(fig, plot_dir / "final-accuracy.png")


def plot_checks(results: list[dict], bench_dir: Path, select: dict[str, list[str]],
                shown: tuple[str, ...] = ("nt", "st")) -> None:
    """Per attack, the lowest seed: ACM per check and test accuracy per epoch, rollbacks marked,
    of ``shown`` defences and of each validation-selected one (labelled with the variant chosen).
    Reads each cell's history.json / checks.csv; cells without them are left out."""
    import csv

    from ..plots import plot_run_comparison

    def load(r: dict):
        cell = bench_dir / "cells" / r["cell"]
        if not (cell / "history.json").exists() or not (cell / "checks.csv").exists():
            return None
        with open(cell / "checks.csv", newline="") as f:
            checks = [{"epoch": int(c["epoch"]), "step": int(c["step"]), "acm": float(c["acm"]),
                       "accepted": c["accepted"] == "True"} for c in csv.DictReader(f)]
        return json.loads((cell / "history.json").read_text()), checks

    chosen = select_by_validation(results, select)
    for attack in dict.fromkeys(r["attack"] for r in results):
        rs = [r for r in results + chosen if r["attack"] == attack]
        seed = min(r["seed"] for r in rs)
        runs = {}
        for r in rs:
            if r["seed"] == seed and (r["defence"] in shown or "chosen" in r):
                label = f"{r['defence']} = {r['chosen']}" if "chosen" in r else r["defence"]
                loaded = load(r)
                if loaded and loaded[1]:
                    runs[label] = loaded
        if runs:
            plot_run_comparison(runs, bench_dir / "plots" / f"checks-{attack}.png",
                                title=f"training data: {attack} (seed {seed}); red x: rolled back / rejected")
