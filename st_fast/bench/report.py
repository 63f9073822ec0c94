"""Tables and plots from finished benchmark cells (also `st-fast report`).

A bench dir keeps its cells in one of two forms, read alike: a run folder per cell under
``cells/`` (what `st-fast bench` writes), or one line per cell in ``cells.jsonl`` (what
``pack_cells`` writes from those folders, so that a committed study needs no per-cell files).
Each line holds the cell's result.json, config.json, summary.json, history.json and checks.csv
rows as plain JSON: everything the report and the per-cell plots are built from.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections import Counter, defaultdict
from pathlib import Path

from ..errors import UserError
from ..utils import atomic_write_text, machine_type

CELLS_FILE = "cells.jsonl"


def _csv_value(text: str):
    """A checks.csv field back to the value written: '' -> None, True/False, int, float, else str."""
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_cell_dir(cell_dir: Path) -> dict:
    """One cell folder as one record (None for a file it lacks); plots are left out: they are
    rebuilt from the record (``write_cell_plots``)."""

    def read_json(name: str):
        path = cell_dir / name
        return json.loads(path.read_text()) if path.exists() else None

    checks = None
    if (cell_dir / "checks.csv").exists():
        with open(cell_dir / "checks.csv", newline="") as f:
            checks = [{k: _csv_value(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return {"cell": cell_dir.name, "result": read_json("result.json"), "config": read_json("config.json"),
            "summary": read_json("summary.json"), "history": read_json("history.json"), "checks": checks}


def load_cells(bench_dir: str | Path) -> dict[str, dict]:
    """Cell id -> record, sorted by id: the packed cells.jsonl, then every finished folder under
    cells/, which replaces the packed line of the same cell (it may be a newer run)."""
    bench_dir = Path(bench_dir)
    records = {}
    if (bench_dir / CELLS_FILE).exists():
        for line in (bench_dir / CELLS_FILE).read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                records[record["cell"]] = record
    for result in (bench_dir / "cells").glob("*/result.json"):
        records[result.parent.name] = read_cell_dir(result.parent)
    return dict(sorted(records.items()))


def pack_cells(bench_dir: str | Path) -> Path:
    """Write bench_dir/cells.jsonl: one line per finished cell (folders and earlier packed lines)."""
    path = Path(bench_dir) / CELLS_FILE
    lines = [json.dumps(r, separators=(",", ":")) + "\n" for r in load_cells(bench_dir).values()]
    atomic_write_text(path, "".join(lines))
    return path


def write_cell_dir(cell_dir: str | Path, record: dict) -> None:
    """One record as its folder (result.json, config.json, summary.json, history.json/.csv,
    checks.csv, as the trainer writes them); result.json last: it marks the cell finished."""
    from ..files import rows_to_csv
    from ..utils import atomic_write_json

    cell_dir = Path(cell_dir)
    for name in ("config", "summary", "history"):
        if record[name] is not None:
            atomic_write_json(cell_dir / f"{name}.json", record[name])
    if record["history"] is not None:
        atomic_write_text(cell_dir / "history.csv", rows_to_csv(record["history"]))
    if record["checks"] is not None:
        atomic_write_text(cell_dir / "checks.csv", rows_to_csv(record["checks"]))
    atomic_write_json(cell_dir / "result.json", record["result"])


def unpack_cells(bench_dir: str | Path) -> int:
    """Write every packed cell back as its folder cells/<id>/ (``write_cell_dir``), so that
    `st-fast bench` skips the finished cells when a packed study is continued; returns how many."""
    cells = load_cells(bench_dir)
    for cell_id, record in cells.items():
        write_cell_dir(Path(bench_dir) / "cells" / cell_id, record)
    return len(cells)


def collect_results(dirs: list[str | Path]) -> list[dict]:
    """result.json of every finished cell under each dir (a bench dir, packed or not, or a single
    cell dir)."""
    results = []
    for d in map(Path, dirs):
        if not d.exists():
            raise UserError(f"{d}: no such run directory")
        results += [r["result"] for r in load_cells(d).values()]
        if (d / "result.json").exists():
            results.append(json.loads((d / "result.json").read_text()))
    return results


def _mean_std(xs: list[float]) -> str:
    if not xs:
        return ""
    m = statistics.fmean(xs) * 100
    if len(xs) == 1:
        return f"{m:.2f}"
    return f"{m:.2f} ± {statistics.stdev(xs) * 100:.2f}"


def _one_machine_type(runs) -> bool:
    """Whether runs may be compared: no two recorded different machine types."""
    return len({machine_type(r.get("machine")) for r in runs} - {"unrecorded"}) <= 1


def select_by_validation(results: list[dict], select: dict[str, list[str]]) -> list[dict]:
    """Pseudo-cells: for each (dataset, arch, ratio, attack, seed) and each selection name, the
    candidate defence with the best accuracy on the clean validation images (first on ties).
    The test accuracy of the chosen run is reported; the test set played no part in the choice.
    Candidates that ran on different machine types are not compared (nothing is chosen)."""
    out = []
    for name, among in select.items():
        groups = defaultdict(dict)
        for r in results:
            if r["defence"] in among and r.get("val_acc") is not None:
                groups[(r.get("dataset"), r["arch"], r["ratio"], r["attack"], r["seed"])][r["defence"]] = r
        for runs in groups.values():
            if set(runs) != set(among):
                continue  # choose only once every candidate has finished
            if not _one_machine_type(runs.values()):
                continue
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
        machines = Counter(machine_type(r.get("machine")) for r in rs if "chosen" not in r)
        out.append("Machine types: " + "; ".join(f"{m}: {n} runs" for m, n in sorted(machines.items())) + "\n")
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
    by seed (same poison, same initialisation): mean ± std, how many seeds A won / tied / lost.
    A pair whose two runs were computed on different machine types (``utils.machine_type``)
    is left out and counted: its difference would mix the method's effect with the kernels'.
    Runs that recorded no machine (studies before 2026-12-01; their READMEs name it) are kept."""
    results = results + select_by_validation(results, select or {})
    runs = {(r["attack"], r["defence"], r["seed"], r["arch"], r["ratio"]): r for r in results}
    attacks = list(dict.fromkeys(r["attack"] for r in results))
    lines = ["Paired differences (final clean test accuracy, points; same attack, seed, arch, ratio "
             "and machine type):\n",
             "| A − B | " + " | ".join(attacks) + " |", "|---|" + "---|" * len(attacks)]
    mixed = 0
    for a, b in pairs:
        row = []
        for attack in attacks:
            d = []
            for k, ra in runs.items():
                rb = runs.get((attack, b, *k[2:]))
                if k[0] != attack or k[1] != a or rb is None:
                    continue
                if not _one_machine_type([ra, rb]):
                    mixed += 1
                    continue
                d.append(100 * (ra["final_test_acc"] - rb["final_test_acc"]))
            if not d:
                row.append("–")
                continue
            spread = f" ± {statistics.stdev(d):.1f}" if len(d) > 1 else ""
            # Accuracies are whole images over the test set, so a one-image gap on 2,000 images
            # is exactly 0.05 points; rounding first keeps float noise from deciding that tie.
            exact = [round(x, 6) for x in d]
            won, tied = sum(x > 0.05 for x in exact), sum(abs(x) <= 0.05 for x in exact)
            mean = round(statistics.fmean(d), 1) + 0.0  # no "-0.0"
            row.append(f"{mean:+.1f}{spread} ({won}/{tied}/{len(d) - won - tied})")
        lines.append(f"| {a} − {b} | " + " | ".join(row) + " |")
    lines += ["", "In brackets: seeds where A won / tied (within 0.05) / lost."]
    if mixed:
        lines.append(f"Left out: {mixed} pair(s) whose two runs ran on different machine types.")
    return "\n".join(lines + [""])


def results_csv(results: list[dict]) -> str:
    from ..files import rows_to_csv

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
    """Per attack, one seed: ACM per check and test (and train) accuracy per epoch, rollbacks
    marked, of ``shown`` defences and of each validation-selected one (labelled with the variant
    chosen). The seed is the lowest at which every shown defence finished, else the lowest.
    Reads each cell's history and checks (``load_cells``); cells without them are left out."""
    from ..plots import plot_run_comparison

    cells = load_cells(bench_dir)

    def load(r: dict):
        record = cells.get(r["cell"])
        if record is None or record["history"] is None or record["checks"] is None:
            return None
        return record["history"], record["checks"]

    chosen = select_by_validation(results, select)
    for attack in dict.fromkeys(r["attack"] for r in results):
        rs = [r for r in results + chosen if r["attack"] == attack]
        complete = [sd for sd in sorted({r["seed"] for r in rs})
                    if set(shown) <= {r["defence"] for r in rs if r["seed"] == sd}]
        seed = complete[0] if complete else min(r["seed"] for r in rs)
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


def write_cell_plots(bench_dir: str | Path) -> int:
    """Rebuild each cell's plots/ (accuracy.png, acm.png, multipliers.png, as the trainer draws
    them) under bench_dir/cells/<id>/ from its record; returns how many cells got plots."""
    from ..models import build_model
    from ..plots import plot_accuracy, plot_acm, plot_multipliers
    from .config import load_config

    bench_dir = Path(bench_dir)
    bench = load_config(bench_dir / "bench.yaml") if (bench_dir / "bench.yaml").exists() else None
    unit_names = {}  # arch -> names; a model's units do not depend on its classes or channels
    done = 0
    for cell_id, record in load_cells(bench_dir).items():
        history, result = record["history"], record["result"]
        if not history:
            continue
        config = {**result, **(record["config"] or {})}
        plots = bench_dir / "cells" / cell_id / "plots"
        poison = "" if result["attack"] == "clean" else f" ({result['attack']})"
        title = f"{config['method'].upper()} {config['arch']} on {config['dataset']}{poison}"
        plot_accuracy(history, plots / "accuracy.png", title=title)
        if record["checks"]:
            tau = _absolute_tau(bench, result) if bench else None
            plot_acm(history, record["checks"], tau, plots / "acm.png", title=title)
        if "multipliers" in history[0]:
            if config["arch"] not in unit_names:
                unit_names[config["arch"]] = build_model(config["arch"]).unit_names()
            names = unit_names[config["arch"]]
            if len(names) != len(history[0]["multipliers"]):
                names = [f"unit {i + 1}" for i in range(len(history[0]["multipliers"]))]
            plot_multipliers(history, names, plots / "multipliers.png", title=title)
        done += 1
    return done


def _absolute_tau(bench, result: dict) -> float | None:
    """The tau a cell's ACM plot marks: the cell's own (variants applied), for the absolute
    trigger only, as Trainer.finish draws it."""
    from .config import defence_configs

    st = defence_configs(bench, result["defence"])[1]
    return st.tau if st.trigger == "absolute" else None
