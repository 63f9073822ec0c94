"""Sharing cells between studies: only a cell run with the same settings on the same kind of CPU
kernels is copied, and the copy says where it came from."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from st_fast.bench.config import parse_config
from st_fast.bench.report import collect_results
from st_fast.bench.share import share_cells
from st_fast.errors import UserError
from st_fast.utils import effective_isa

AVX2_MACHINE = {"cpu": "AMD EPYC", "cpu_isa": ["avx2", "fma"], "threads": 1}
AVX512_LIMITED = {"cpu": "AMD EPYC", "cpu_isa": ["avx2", "avx512_bf16", "avx512f", "fma"], "threads": 2,
                  "kernel_isa": {"aten": "AVX2", "dnnl": "AVX2"}}
BASE = {"dataset": "fashion-mnist", "attacks": ["clean", "sp"], "defences": ["nt", "nt-cg-ft"], "seeds": [0],
        "train": {"epochs": 2, "train_subset": 200, "test_subset": 100, "val_size": 20},
        "st": {"ft_epochs": 1}, "attack_params": {"sp": {"eps": 0.5}}}


def _source(tmp_path, raw: dict, machine: dict | None, name: str = "source"):
    """A finished study folder as `st-fast report --pack` leaves it: bench.yaml + cells.jsonl."""
    cfg = parse_config(json.loads(json.dumps({**raw, "name": name})))
    folder = tmp_path / name
    folder.mkdir()
    (folder / "bench.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    lines = []
    for i, cell in enumerate(cfg.cells()):
        result = {"attack": cell.attack, "ratio": 1.0, "arch": cell.arch, "defence": cell.defence,
                  "seed": cell.seed, "cell": cell.id, "final_test_acc": 0.5 + i / 100,
                  "peak_test_acc_oracle": 0.6, "device": "cpu", "val_acc": 0.5,
                  "rollbacks": 0, "wall_s": 1.0, "test_acc_curve": [0.5]}
        if machine is not None:
            result["machine"] = machine
        lines.append(json.dumps({"cell": cell.id, "result": result, "config": {"seed": cell.seed},
                                 "summary": None, "history": [{"epoch": 1, "test_acc": 0.5}], "checks": None}))
    (folder / "cells.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def _run_here(out, src, cell_id: str, **changes):
    """Write the source's record of ``cell_id`` into OUT as a cell run here (a witness)."""
    from st_fast.bench.report import load_cells, write_cell_dir

    record = load_cells(src)[cell_id]
    write_cell_dir(out / "cells" / cell_id, {**record, "result": {**record["result"], **changes}})


def _poison_file(out, name: str, seed: int = 0) -> str:
    """A tiny poisoned set at OUT/poisons/<name>; returns its content digest."""
    import torch

    from st_fast.data.poisoned import PoisonedSet

    g = torch.Generator().manual_seed(seed)
    ps = PoisonedSet(torch.randint(0, 256, (8, 1, 4, 4), dtype=torch.uint8, generator=g),
                     torch.arange(8) % 2, torch.arange(8), {"attack": "sp"})
    ps.save(out / "poisons" / name)
    return ps.digest()


def test_identical_cells_are_shared_with_their_source(tmp_path):
    src = _source(tmp_path, BASE, AVX2_MACHINE)
    target = parse_config(json.loads(json.dumps({**BASE, "seeds": [0, 1]})))
    out = tmp_path / "out"
    _run_here(out, src, "sp-r1-small-resnet-nt-s0")   # the witness that sp's poison is the source's
    ids = share_cells(target, out, [src], "cpu", AVX512_LIMITED, verbose=False)
    assert sorted(ids) == sorted(c.id for c in target.cells() if c.seed == 0 and c.id != "sp-r1-small-resnet-nt-s0")
    results = {r["cell"]: r for r in collect_results([out]) if r["cell"] in ids}
    assert set(results) == set(ids)
    assert all(r["shared_from"] == "source" for r in results.values())
    assert json.loads((out / "cells" / ids[0] / "history.json").read_text()) == [{"epoch": 1, "test_acc": 0.5}]
    # a second call finds them finished and copies nothing
    assert share_cells(target, out, [src], "cpu", AVX512_LIMITED, verbose=False) == []


CLEAN_IDS = ["clean-small-resnet-nt-cg-ft-s0", "clean-small-resnet-nt-s0"]


def test_a_poisoned_cell_without_a_witness_is_not_shared(tmp_path, capsys):
    # the source predates poison digests and nothing of sp ran here: its poison may be another
    src = _source(tmp_path, BASE, AVX2_MACHINE)
    ids = share_cells(parse_config(json.loads(json.dumps(BASE))), tmp_path / "out", [src], "cpu", AVX2_MACHINE)
    assert sorted(ids) == CLEAN_IDS
    assert "no cell of its sp poison run here" in capsys.readouterr().out


def test_a_witness_that_differs_stops_the_sharing(tmp_path, capsys):
    # the committed em-class case: the same parameters crafted another poison on this machine
    src = _source(tmp_path, BASE, AVX2_MACHINE)
    out = tmp_path / "out"
    _run_here(out, src, "sp-r1-small-resnet-nt-s0", test_acc_curve=[0.49])
    ids = share_cells(parse_config(json.loads(json.dumps(BASE))), out, [src], "cpu", AVX2_MACHINE)
    assert sorted(ids) == CLEAN_IDS
    assert "poison sp differs: witness sp-r1-small-resnet-nt-s0 test_acc_curve" in capsys.readouterr().out


def test_a_source_with_poison_digests_is_shared_only_on_the_same_poison(tmp_path, capsys):
    src = _source(tmp_path, BASE, AVX2_MACHINE)
    digest = _poison_file(tmp_path / "elsewhere", "sp-r1-s0.pt")
    lines = [json.loads(line) for line in (src / "cells.jsonl").read_text().splitlines()]
    for line in lines:
        if line["cell"].startswith("sp-"):
            line["result"]["poison_digest"] = digest
    (src / "cells.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    target = parse_config(json.loads(json.dumps(BASE)))
    sp_ids = ["sp-r1-small-resnet-nt-cg-ft-s0", "sp-r1-small-resnet-nt-s0"]

    out = tmp_path / "not-yet"     # the poison is not made here yet: nothing to compare
    assert sorted(share_cells(target, out, [src], "cpu", AVX2_MACHINE)) == CLEAN_IDS
    assert "not made here yet" in capsys.readouterr().out

    out = tmp_path / "other"       # another poison here
    _poison_file(out, "sp-r1-s0.pt", seed=1)
    assert sorted(share_cells(target, out, [src], "cpu", AVX2_MACHINE)) == CLEAN_IDS
    assert f"poison sp differs (digest {digest[:12]}" in capsys.readouterr().out

    out = tmp_path / "same"        # the same content, no witness needed
    _poison_file(out, "sp-r1-s0.pt")
    assert sorted(share_cells(target, out, [src], "cpu", AVX2_MACHINE, verbose=False)) == sorted(CLEAN_IDS + sp_ids)


@pytest.mark.parametrize("change, shared_ids", [
    ({"train": {**BASE["train"], "epochs": 3}}, []),                      # every cell's training changed
    ({"attack_params": {"sp": {"eps": 0.25}}}, ["clean-small-resnet-nt-s0", "clean-small-resnet-nt-cg-ft-s0"]),
    # conservative: the whole STConfig counts, whether the cell's method reads a field or not
    ({"st": {"ft_epochs": 2}}, []),
])
def test_a_changed_setting_is_not_shared(tmp_path, change, shared_ids, capsys):
    src = _source(tmp_path, BASE, AVX2_MACHINE)
    target = parse_config(json.loads(json.dumps({**BASE, **change})))
    ids = share_cells(target, tmp_path / "out", [src], "cpu", AVX2_MACHINE)
    assert sorted(ids) == sorted(shared_ids)
    assert "not shared from source" in capsys.readouterr().out


@pytest.mark.parametrize("machine", [
    None,                                                                 # not recorded: cannot be checked
    {"cpu": "Intel(R) Xeon(R) Processor", "cpu_isa": ["avx2", "fma"]},    # another CPU type
    {**AVX512_LIMITED, "kernel_isa": None},                               # same CPU, AVX-512 kernels
])
def test_another_machine_is_not_shared(tmp_path, machine):
    src = _source(tmp_path, BASE, machine)
    assert share_cells(parse_config(json.loads(json.dumps(BASE))), tmp_path / "out", [src], "cpu",
                       AVX512_LIMITED, verbose=False) == []


def test_a_gpu_cell_is_not_shared_into_a_cpu_study(tmp_path):
    src = _source(tmp_path, BASE, AVX2_MACHINE)
    lines = [json.loads(line) for line in (src / "cells.jsonl").read_text().splitlines()]
    for line in lines:
        line["result"]["device"] = "cuda:0"
    (src / "cells.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert share_cells(parse_config(json.loads(json.dumps(BASE))), tmp_path / "out", [src], "cpu",
                       AVX2_MACHINE, verbose=False) == []


def test_a_folder_without_bench_yaml_is_refused(tmp_path):
    with pytest.raises(UserError, match="not a bench folder"):
        share_cells(parse_config(json.loads(json.dumps(BASE))), tmp_path / "out", [tmp_path], "cpu", AVX2_MACHINE)


def test_effective_isa_counts_a_limit_only_when_both_libraries_are_limited():
    assert effective_isa(AVX512_LIMITED) == ["avx2", "fma"]
    only_aten = {**AVX512_LIMITED, "kernel_isa": {"aten": "AVX2", "dnnl": None}}
    assert effective_isa(only_aten) == AVX512_LIMITED["cpu_isa"]
    assert effective_isa(AVX2_MACHINE) == ["avx2", "fma"]


def test_bench_share_from_flag_copies_before_running(tmp_path, monkeypatch):
    from st_fast.cli import main
    from st_fast.utils import machine_info

    src = _source(tmp_path, BASE, machine_info())
    cfg = tmp_path / "b.yaml"
    cfg.write_text(yaml.safe_dump(BASE))
    out = tmp_path / "out"
    _run_here(out, src, "sp-r1-small-resnet-nt-s0", shared_from="a test")   # counts as shared
    _run_here(out, src, "sp-r1-small-resnet-nt-cg-ft-s0")   # the witness: run here
    # every cell is shared, so the bench has nothing left to train and only writes its reports
    assert main(["bench", "--config", str(cfg), "--out", str(out), "--share-from", str(src)]) == 0
    assert sorted(r["cell"] for r in collect_results([out])) == sorted(c.id for c in parse_config(BASE).cells())
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 4 and {r["shared_from"] for r in rows} == {"source", "a test", ""}


def test_a_cell_a_worker_is_running_is_left_to_it(tmp_path):
    from st_fast.bench.runner import Claim

    src = _source(tmp_path, BASE, AVX2_MACHINE)
    target = parse_config(json.loads(json.dumps(BASE)))
    out = tmp_path / "out"
    _run_here(out, src, "sp-r1-small-resnet-nt-cg-ft-s0")
    running = Claim(out / "cells" / "sp-r1-small-resnet-nt-s0")
    assert running.acquire()
    try:
        ids = share_cells(target, out, [src], "cpu", AVX2_MACHINE, verbose=False)
    finally:
        running.release()
    assert "sp-r1-small-resnet-nt-s0" not in ids and len(ids) == 2
    assert not (out / "cells" / "sp-r1-small-resnet-nt-s0").exists()


def test_a_claim_file_is_not_executable_and_keeps_the_umask(tmp_path):
    import os

    from st_fast.bench.runner import Claim

    old = os.umask(0o027)
    try:
        claim = Claim(tmp_path / "cells" / "x")
        assert claim.acquire()
        mode = claim.path.stat().st_mode & 0o777
        claim.release()
    finally:
        os.umask(old)
    assert mode == 0o640


def test_an_attack_whose_version_changed_is_not_shared(tmp_path, monkeypatch):
    import dataclasses as dc

    from st_fast.attacks import ATTACKS

    src = _source(tmp_path, BASE, AVX2_MACHINE)   # its results carry no attack_version: version 1
    monkeypatch.setitem(ATTACKS, "sp", dc.replace(ATTACKS["sp"], version=2))
    ids = share_cells(parse_config(json.loads(json.dumps(BASE))), tmp_path / "out", [src], "cpu", AVX2_MACHINE,
                      verbose=False)
    assert sorted(ids) == ["clean-small-resnet-nt-cg-ft-s0", "clean-small-resnet-nt-s0"]


def test_ops_and_ar_are_at_version_2():
    # their defaults became the authors' algorithms (issue 18): the same parameters make another poison
    from st_fast.attacks import ATTACKS

    assert ATTACKS["ops"].version == 2 and ATTACKS["ar"].version == 2 and ATTACKS["sp"].version == 1
