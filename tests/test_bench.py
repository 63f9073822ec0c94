"""Benchmark harness: config validation, resumable matrix, report regeneration."""

import json

import pytest

from st_fast.bench import collect_results, load_config, parse_config, run_bench
from st_fast.cli import main
from st_fast.errors import UserError


def _raw(root, **kw):
    cfg = {"name": "t", "dataset": "fashion-mnist", "attacks": ["clean", "sp"], "defences": ["nt", "st"],
           "seeds": [0], "data_root": str(root),
           "train": {"epochs": 1, "batch_size": 32, "device": "cpu", "optimizer": "torch"},
           "st": {"acm_embedding": None, "acm_per_class": 4, "log_acm": False}}
    cfg.update(kw)
    return cfg


@pytest.mark.parametrize("change,message", [
    ({"attacks": ["clean", "nope"]}, "unknown attack"),
    ({"defences": ["nt", "magic"]}, "unknown defence"),
    ({"architectures": ["resnet19"]}, "unknown architecture"),
    ({"ratios": [1.5]}, "ratio"),
    ({"colour": "blue"}, "unknown field"),
    ({"seeds": []}, "non-empty list"),
    ({"variants": {"v": {"rollback": "retry"}}, "defences": ["v"]}, "needs a 'base'"),
])
def test_config_errors_say_what_is_wrong(tmp_path, change, message):
    with pytest.raises(UserError, match=message):
        parse_config(_raw(tmp_path, **change))


def test_missing_fields(tmp_path):
    raw = _raw(tmp_path)
    del raw["attacks"]
    with pytest.raises(UserError, match="missing required field.*attacks"):
        parse_config(raw)
    (tmp_path / "bad.yaml").write_text("dataset: [unclosed")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_resume_half_finished_matrix_and_report(tiny_fashion, tmp_path):
    cfg = parse_config(_raw(tiny_fashion))
    out = tmp_path / "bench"
    first = run_bench(cfg, out, device="cpu", only="clean")  # half of the matrix
    assert {r["attack"] for r in first} == {"clean"} and len(first) == 2
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/result.json")}
    # an interrupted cell: its directory exists but has no result.json yet
    (out / "cells" / "sp-r1-small-resnet-nt-s0").mkdir(parents=True)
    results = run_bench(cfg, out, device="cpu")
    assert len(results) == 4
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # finished cells were skipped
    assert not list(out.glob("cells/*/checkpoint.pt"))  # finished cells drop their checkpoints
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all(0 <= json.loads(x)["final_test_acc"] <= 1 for x in lines)
    assert all(json.loads(x)["machine"]["torch"] for x in lines)  # what each result was computed on
    from st_fast.data.poisoned import load

    sp_digest = load(out / "poisons" / "sp-r1-s0.pt").digest()   # what sharing compares
    assert {json.loads(x).get("poison_digest") for x in lines} == {None, sp_digest}
    assert "machine.cpu" in (out / "results.csv").read_text().splitlines()[0]
    md = (out / "results.md").read_text()
    assert "| sp |" in md and "| nt | st |" in md
    assert (out / "plots" / "final-accuracy.png").exists()
    assert (out / "plots" / "checks-sp.png").exists()  # ACM per check, rollbacks marked
    # report rebuilds the same table from the cells alone
    (out / "results.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "results.md").read_text() == md
    assert len(collect_results([out])) == 4


def test_report_on_empty_dir_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no finished cells" in capsys.readouterr().err


def test_selection_uses_validation_accuracy_only():
    from st_fast.bench.report import markdown_tables, select_by_validation

    def r(defence, seed, val, test):
        return {"dataset": "d", "arch": "a", "ratio": 1.0, "attack": "sp", "seed": seed, "defence": defence,
                "val_acc": val, "final_test_acc": test, "peak_test_acc_oracle": test, "wall_s": 1.0,
                "rollbacks": 0}

    results = [r("st", 0, 0.9, 0.1), r("st-retry", 0, 0.5, 0.99),   # best test, worse val: not chosen
               r("st", 1, 0.2, 0.3), r("st-retry", 1, 0.6, 0.4)]
    chosen = select_by_validation(results, {"st-val": ["st", "st-retry"]})
    assert sorted((c["seed"], c["chosen"], c["final_test_acc"]) for c in chosen) == [(0, "st", 0.1), (1, "st-retry", 0.4)]
    md = markdown_tables(results, {"st-val": ["st", "st-retry"]})
    assert "st-val" in md and "sp: st, st-retry" in md


def test_workers_pass_over_claimed_cells_and_take_over_stale_claims(tiny_fashion, tmp_path):
    import os
    import socket

    from st_fast.bench.runner import Claim, matches

    assert matches("sp-r1-small-resnet-st-s0", "-nt-s,-st-s") and not matches("sp-r1-x-st-cg-s0", "-st-s")
    assert matches("anything", None) and matches("a-b", ["z", "b"])
    cfg = parse_config(_raw(tiny_fashion))
    out = tmp_path / "bench"
    # a live worker (this process's parent) holds one clean cell; a dead one held the other
    (out / "cells").mkdir(parents=True)
    (out / "cells" / "clean-small-resnet-nt-s0.claim").write_text(f"{socket.gethostname()} {os.getppid()}\n")
    dead = 2**22 + 12345  # above the default pid_max: no such process
    (out / "cells" / "clean-small-resnet-st-s0.claim").write_text(f"{socket.gethostname()} {dead}\n")
    results = run_bench(cfg, out, device="cpu", only="clean")
    assert [r["defence"] for r in results] == ["st"]  # the stale claim was taken over, the live one left
    assert not (out / "cells" / "clean-small-resnet-st-s0.claim").exists()  # released when done
    claim = Claim(out / "poisons" / "sp.pt")
    assert claim.acquire() and not Claim(out / "poisons" / "sp.pt").acquire()
    claim.release()
    assert Claim(out / "poisons" / "sp.pt").acquire()


def test_cells_other_workers_ran_leave_the_running_count(tiny_fashion, tmp_path):
    from st_fast.bench.progress import Progress
    from st_fast.bench.runner import Claim, sync_others

    cfg = parse_config(_raw(tiny_fashion))
    out = tmp_path / "bench"
    cells = cfg.cells()[:3]
    tracker = Progress(out, [c.id for c in cells], "serial", quiet=True)
    for c in cells:   # each was passed over while another worker held its claim
        tracker.state[c.id] = "running"
    done, given_up, held = cells
    (out / "cells" / done.id).mkdir(parents=True)
    (out / "cells" / done.id / "result.json").write_text("{}")
    claim = Claim(out / "cells" / held.id)
    assert claim.acquire()
    try:
        sync_others(out, cells, tracker)
        assert [tracker.state[c.id] for c in cells] == ["done", "left", "running"]
        assert tracker.counts() == {"done": 1, "running": 1, "failed": 0, "left": 1}
    finally:
        claim.release()
    sync_others(out, cells, tracker)
    assert tracker.state[held.id] == "left"


def test_paired_differences_pair_runs_by_seed(capsys, tmp_path):
    from st_fast.bench.report import paired_differences

    def r(defence, seed, acc):
        return {"attack": "sp", "arch": "a", "ratio": 1.0, "seed": seed, "defence": defence, "final_test_acc": acc}

    rows = [r("st", 0, 0.80), r("st", 1, 0.60), r("nt", 0, 0.70), r("nt", 1, 0.60), r("nt", 2, 0.1)]
    md = paired_differences(rows, [("st", "nt"), ("nt", "st")])
    assert "| st − nt | +5.0 ± 7.1 (1/1/0) |" in md  # seed 2 has no st run: left out
    assert "| nt − st | -5.0 ± 7.1 (0/1/1) |" in md
    # one test image of 2,000 is 0.05 points: a tie, whichever way float subtraction rounds it
    one_image = [r("st", 0, 0.501), r("nt", 0, 0.5005), r("st", 1, 0.5005), r("nt", 1, 0.501),
                 r("st", 2, 0.77), r("nt", 2, 0.769)]
    assert 100 * (0.501 - 0.5005) > 0.05 and 100 * (0.5005 - 0.501) < -0.05  # the float noise
    assert "| st − nt | +0.0 ± 0.1 (1/2/0) |" in paired_differences(one_image, [("st", "nt")])
    assert main(["report", str(tmp_path), "--paired", "st-nt"]) == 2
    assert "--paired wants two defence names as A:B" in capsys.readouterr().err


def test_summary_table_and_report_section_of_the_config(tmp_path):
    from st_fast.bench.report import summary_table

    def r(attack, defence, seed, acc, val=None):
        return {"attack": attack, "arch": "a", "ratio": 1.0, "seed": seed, "defence": defence,
                "final_test_acc": acc, "val_acc": val}

    rows = [r("sp", "nt", 0, 0.30), r("sp", "nt", 1, 0.50), r("sp", "st", 0, 0.8, 0.6),
            r("sp", "st", 1, 0.7, 0.9), r("sp", "st-a", 0, 0.9, 0.7), r("sp", "st-a", 1, 0.1, 0.2)]
    md = summary_table(rows, ["st-val", "nt"], select={"st-val": ["st", "st-a"]})
    # st-val: seed 0 -> st-a (val .7 > .6, test .9); seed 1 -> st (val .9, test .7); columns in the order asked
    assert "| train data | st-val | nt |" in md and "| sp | 80.00 ± 14.14 | 40.00 ± 14.14 |" in md
    with pytest.raises(UserError, match="report names magic"):
        parse_config(_raw(tmp_path, report={"summary": ["nt", "magic"]}))
    with pytest.raises(UserError, match="A:B"):
        parse_config(_raw(tmp_path, report={"paired": ["nt-st"]}))
    with pytest.raises(UserError, match="'report' takes"):
        parse_config(_raw(tmp_path, report={"colour": 1}))
    assert parse_config(_raw(tmp_path, report={"summary": ["st"], "paired": ["st:nt"]})).report


def test_share_from_runs_again_before_each_cell(tiny_fashion, tmp_path):
    # a poisoned set's cells become shareable once this study has made the poison (equal
    # digest): the first sp cell runs here, the second is copied instead of trained
    import yaml

    raw = _raw(tiny_fashion)
    source = tmp_path / "source"
    run_bench(parse_config(raw), source, device="cpu")
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert main(["bench", "--config", str(tmp_path / "b.yaml"), "--out", str(out), "--share-from", str(source)]) == 0
    here = {r["cell"]: r for r in collect_results([out])}
    there = {r["cell"]: r for r in collect_results([source])}
    assert {c: r.get("shared_from") for c, r in here.items()} == {
        "clean-small-resnet-nt-s0": "t", "clean-small-resnet-st-s0": "t",
        "sp-r1-small-resnet-nt-s0": None, "sp-r1-small-resnet-st-s0": "t"}
    ran = "sp-r1-small-resnet-nt-s0"   # the same poison and training here as there, bit for bit
    assert here[ran]["poison_digest"] == there[ran]["poison_digest"]
    assert here[ran]["test_acc_curve"] == there[ran]["test_acc_curve"]


def test_runs_on_different_machine_types_are_never_paired_or_compared():
    from st_fast.bench.report import markdown_tables, paired_differences, select_by_validation
    from st_fast.utils import machine_type

    amd = {"cpu": "AMD EPYC", "cpu_isa": ["avx2", "avx512f", "fma"], "kernel_isa": {"aten": "AVX2", "dnnl": "AVX2"}}
    amd_avx2 = {"cpu": "AMD EPYC", "cpu_isa": ["avx2", "fma"]}
    intel = {"cpu": "Intel(R) Xeon(R) Processor", "cpu_isa": ["avx2", "avx512f", "fma"]}
    # an AVX-512 EPYC limited to AVX2 is the AVX2-only EPYC's type; an Intel Xeon is not
    assert machine_type(amd) == machine_type(amd_avx2) == "AMD EPYC (avx2+fma)"
    assert machine_type(intel) != machine_type(amd) and machine_type(None) == "unrecorded"

    def r(defence, seed, acc, machine, val=0.5):
        return {"dataset": "d", "attack": "sp", "arch": "a", "ratio": 1.0, "seed": seed, "defence": defence,
                "final_test_acc": acc, "peak_test_acc_oracle": acc, "val_acc": val, "wall_s": 1.0,
                "rollbacks": 0, "machine": machine}

    rows = [r("st", 0, 0.80, amd), r("nt", 0, 0.70, amd_avx2),        # one type: paired
            r("st", 1, 0.90, intel), r("nt", 1, 0.10, amd),           # two types: left out
            r("st-a", 0, 0.99, intel, val=0.9),                       # st-val on seed 0: not chosen
            r("st", 2, 0.50, amd), r("nt", 2, 0.30, None)]            # an unrecorded machine: kept
    md = paired_differences(rows, [("st", "nt")])
    assert "| st − nt | +15.0 ± 7.1 (2/0/0) |" in md
    assert "Left out: 1 pair(s) whose two runs ran on different machine types." in md
    assert select_by_validation(rows, {"st-val": ["st", "st-a"]}) == []
    assert "Machine types: AMD EPYC (avx2+fma): 4 runs; Intel(R) Xeon(R) Processor (avx2+avx512f+fma): 2 runs; unrecorded: 1 runs" \
        in markdown_tables(rows)


def test_check_plots_take_the_lowest_seed_where_every_shown_defence_finished(tmp_path, monkeypatch):
    import st_fast.plots as plots
    from st_fast.bench import report

    history = [{"epoch": 1, "test_acc": 0.5, "train_acc": 0.6}]
    checks = [{"epoch": 1, "step": 10, "acm": 2.0, "accepted": True}]
    cells = {f"{d}-s{s}": {"history": history, "checks": checks} for d, s in (("nt", 0), ("nt", 1), ("st", 1))}
    monkeypatch.setattr(report, "load_cells", lambda _dir: cells)
    drawn = {}
    monkeypatch.setattr(plots, "plot_run_comparison", lambda runs, path, title="": drawn.update({title: sorted(runs)}))
    results = [{"cell": c, "attack": "sp", "defence": c.split("-")[0], "seed": int(c[-1])} for c in cells]
    report.plot_checks(results, tmp_path, {})
    assert drawn == {"training data: sp (seed 1); red x: rolled back / rejected": ["nt", "st"]}
    monkeypatch.undo()   # the real one draws it, train accuracy included
    assert plots.plot_run_comparison({"nt": (history, checks)}, tmp_path / "c.png", title="t").exists()


def test_poisons_only_makes_each_poison_once_and_trains_nothing(tiny_fashion, tmp_path, capsys):
    import threading

    from st_fast.bench.runner import Claim, make_poisons

    cfg = parse_config(_raw(tiny_fashion))
    out = tmp_path / "bench"
    assert run_bench(cfg, out, device="cpu", poisons_only=True) == []
    assert [p.name for p in (out / "poisons").glob("*.pt")] == ["sp-r1-s0.pt"]   # one for both sp cells
    assert not (out / "cells").exists() and not (out / "results.md").exists()
    made = (out / "poisons" / "sp-r1-s0.pt").stat().st_mtime_ns
    assert "sp-r1-s0.pt: ready" in capsys.readouterr().err
    # a second worker waits while another holds the poison's claim, then finds it there
    (out / "poisons" / "sp-r1-s0.pt").rename(out / "kept.pt")
    claim = Claim(out / "poisons" / "sp-r1-s0.pt")
    assert claim.acquire()

    def other_worker_finishes():
        (out / "kept.pt").rename(out / "poisons" / "sp-r1-s0.pt")
        claim.release()

    threading.Timer(0.3, other_worker_finishes).start()
    cells = [c for c in cfg.cells() if c.attack == "sp"]
    assert make_poisons(cfg, out, cells, "cpu", poll_s=0.05) == [out / "poisons" / "sp-r1-s0.pt"]
    assert (out / "poisons" / "sp-r1-s0.pt").stat().st_mtime_ns == made   # waited for, not made again
    assert make_poisons(cfg, out, [c for c in cfg.cells() if c.attack == "clean"], "cpu") == []
    assert "need no poison" in capsys.readouterr().err
    # the CLI: one clear line for an executor that cannot do it
    (tmp_path / "b.yaml").write_text(json.dumps(_raw(tiny_fashion)))
    code = main(["bench", "--config", str(tmp_path / "b.yaml"), "--out", str(out), "--poisons-only",
                 "--executor", "ray"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--poisons-only" in err and len(err.splitlines()) == 1
    assert main(["bench", "--config", str(tmp_path / "b.yaml"), "--out", str(out), "--poisons-only"]) == 0
    assert "already there" in capsys.readouterr().err and not (out / "cells").exists()
