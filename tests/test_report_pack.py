"""Packing a bench dir's cells into cells.jsonl loses nothing the report reads."""

from __future__ import annotations

import csv
import json
import shutil

from st_fast.bench.report import (
    CELLS_FILE,
    collect_results,
    load_cells,
    pack_cells,
    unpack_cells,
    write_cell_plots,
    write_reports,
)
from st_fast.cli import main


def _write_cell(bench, attack: str, defence: str, seed: int, accs: list[float], acms: list[float]) -> None:
    """A finished cell folder as `st-fast bench` leaves it (plots aside)."""
    cell_id = f"{attack}-small-resnet-{defence}-s{seed}"
    d = bench / "cells" / cell_id
    d.mkdir(parents=True)
    history = [{"epoch": e + 1, "lr": 0.1, "multipliers": [1.0, 0.5, 0.25], "train_acc": a + 0.1, "test_acc": a,
                "time_train": 1.5, "test_acc_rejected": "" if e else a - 0.05} for e, a in enumerate(accs)]
    checks = [{"epoch": e + 1, "step": 10, "acm": v, "triggered": v > 3.5, "accepted": v <= 3.5, "c": 0,
               "acm_impl": "cpp-avx2"} for e, v in enumerate(acms)]
    result = {"attack": attack, "ratio": 1.0, "arch": "small-resnet", "defence": defence, "seed": seed,
              "cell": cell_id, "dataset": "fashion-mnist", "method": defence, "final_test_acc": accs[-1],
              "peak_test_acc_oracle": max(accs), "val_acc": 0.55 + seed / 100, "rollbacks": sum(v > 3.5 for v in acms),
              "wall_s": 12.25 + seed, "test_acc_curve": accs, "machine": {"cpu": "test CPU", "cores": 2}}
    (d / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    (d / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    (d / "config.json").write_text(json.dumps({"method": defence, "arch": "small-resnet",
                                               "dataset": "fashion-mnist"}) + "\n")
    (d / "summary.json").write_text(json.dumps({"method": defence, "final_test_acc": accs[-1]}) + "\n")
    with open(d / "checks.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(checks[0]))
        writer.writeheader()
        writer.writerows(checks)


def _study(tmp_path):
    bench = tmp_path / "study"
    for seed in (0, 1):
        _write_cell(bench, "sp", "nt", seed, [0.3, 0.5 + seed / 10, 0.4], [2.0, 3.0, 3.9])
        _write_cell(bench, "sp", "st", seed, [0.3, 0.6, 0.7 + seed / 10], [2.0, 3.6, 3.1])
        _write_cell(bench, "clean", "st", seed, [0.6, 0.8, 0.85], [1.0, 1.5, 2.0])
    write_reports(collect_results([bench]), bench)
    return bench


def test_report_from_packed_cells_is_identical(tmp_path):
    bench = _study(tmp_path)
    pack_cells(bench)
    packed = tmp_path / "packed"
    shutil.copytree(bench, packed, ignore=shutil.ignore_patterns("cells", "plots", "results.*"))
    assert sorted(p.name for p in packed.iterdir()) == [CELLS_FILE]
    write_reports(collect_results([packed]), packed)
    for name in ("results.md", "results.csv", "results.jsonl"):
        assert (packed / name).read_bytes() == (bench / name).read_bytes(), name
    for plot in (bench / "plots").glob("*.png"):  # checks-*.png need the packed history and checks
        assert (packed / "plots" / plot.name).read_bytes() == plot.read_bytes(), plot.name
    assert (packed / "plots" / "checks-sp.png").exists()


def test_packed_record_holds_each_file(tmp_path):
    bench = _study(tmp_path)
    pack_cells(bench)
    cell = bench / "cells" / "sp-small-resnet-st-s1"
    record = next(r for r in map(json.loads, (bench / CELLS_FILE).read_text().splitlines())
                  if r["cell"] == cell.name)
    for name in ("result", "config", "summary", "history"):
        assert record[name] == json.loads((cell / f"{name}.json").read_text())
    with open(cell / "checks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert record["checks"][1] == {"epoch": 2, "step": 10, "acm": 3.6, "triggered": True, "accepted": False,
                                   "c": 0, "acm_impl": "cpp-avx2"}
    assert [{k: str(v) for k, v in c.items()} for c in record["checks"]] == rows


def test_folders_replace_packed_lines_unless_unfinished(tmp_path):
    bench = _study(tmp_path)
    pack_cells(bench)
    shutil.rmtree(bench / "cells")
    _write_cell(bench, "sp", "nt", 0, [0.3, 0.5, 0.45], [2.0, 3.0, 3.2])  # a newer run of a packed cell
    unfinished = bench / "cells" / "sp-small-resnet-st-s0"
    unfinished.mkdir()
    (unfinished / "history.json").write_text("[]")
    cells = load_cells(bench)
    assert len(cells) == 6
    assert cells["sp-small-resnet-nt-s0"]["result"]["final_test_acc"] == 0.45
    assert cells["sp-small-resnet-st-s0"]["history"]  # the packed line, not the unfinished folder


def test_unpack_restores_cell_files(tmp_path):
    bench = _study(tmp_path)
    pack_cells(bench)
    original = tmp_path / "original"
    shutil.move(bench / "cells", original)
    assert unpack_cells(bench) == 6
    for cell in original.iterdir():
        restored = bench / "cells" / cell.name
        assert (restored / "checks.csv").read_bytes() == (cell / "checks.csv").read_bytes()
        for name in ("result.json", "history.json", "config.json", "summary.json"):
            assert json.loads((restored / name).read_text()) == json.loads((cell / name).read_text())


def test_cli_pack_and_cell_plots(tmp_path, capsys):
    bench = _study(tmp_path)
    assert main(["report", str(bench), "--pack"]) == 0
    shutil.rmtree(bench / "cells")
    assert main(["report", str(bench), "--cell-plots"]) == 0
    assert "plots of 6 cells" in capsys.readouterr().out
    for name in ("accuracy.png", "acm.png", "multipliers.png"):
        assert (bench / "cells" / "clean-small-resnet-st-s0" / "plots" / name).stat().st_size > 0
    assert write_cell_plots(bench) == 6
