"""benchmarks/harness.py: interleaving, ratios to the baseline, the table and the pages."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import harness  # noqa: E402


def test_interleave_warms_up_then_takes_turns():
    calls = []
    samples = harness.interleave({"a": lambda: calls.append("a") or 1, "b": lambda: calls.append("b") or 2},
                                 rounds=3, warmup=1)
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert [s.returned for s in samples["b"]] == [2, 2, 2]


def _run(argv=None) -> harness.Run:
    run = harness.Run("demo_bench", "cpu", argv=argv or ["--rounds", "2"])
    wall = {"baseline": [4.0, 4.4, 3.6], "fast": [1.0, 1.2, 0.8]}
    samples = {name: [harness.Sample(w, w / 2, 100) for w in ws] for name, ws in wall.items()}
    run.add_timings("setting A", samples, unit="s", baseline="baseline")
    run.add_rates("setting A", samples, baseline="baseline")
    run.add("setting B", "fast", "note", "a | b")
    return run


def test_rows_carry_ratio_to_the_baseline_of_the_same_run():
    rows = _run().finished_rows()
    assert all(list(r) == harness.COLUMNS for r in rows)
    by = {(r["candidate"], r["figure"]): r for r in rows}
    assert by[("fast", "wall")]["value"] == 1.0 and by[("fast", "wall")]["spread"] == pytest.approx(0.4)
    assert by[("fast", "wall")]["ratio_to_baseline"] == 4.0  # lower is better: baseline / value
    assert by[("fast", "throughput")]["ratio_to_baseline"] == 4.0  # higher is better: value / baseline
    assert by[("baseline", "CPU")]["ratio_to_baseline"] == 1.0
    assert by[("fast", "note")]["ratio_to_baseline"] is None
    assert rows[0]["command"].endswith("--rounds 2") and rows[0]["machine"] and rows[0]["versions"]


def test_save_appends_rows_and_writes_the_page_beside_its_table(tmp_path, capsys):
    table = tmp_path / "rows.jsonl"
    args = argparse.Namespace(write=True, table=str(table))
    _run().save(args)
    _run().save(args)
    rows = harness.read_rows(table)
    assert len({r["run"] for r in rows}) == 2 and len(rows) == 2 * len(_run().finished_rows())
    page = (tmp_path / "demo_bench_cpu.md").read_text()
    assert page.count("#### setting A") == 2
    assert "| fast | 1.0 [0.4] | 4.0x |" in page and "a \\| b" in page  # a '|' cannot break the table
    assert (tmp_path / "rows.csv").read_text().splitlines()[0] == ",".join(harness.COLUMNS)
    assert "rows appended" in capsys.readouterr().out


def test_merge_adds_each_run_once(tmp_path):
    source, table = tmp_path / "gpu_rows.jsonl", tmp_path / "table.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in _run().finished_rows()))
    assert harness.merge([source], table) > 0
    assert harness.merge([source], table) == 0
    assert len(harness.read_rows(table)) == len(harness.read_rows(source))


def test_parse_only_exits_before_measuring(capsys):
    parser = argparse.ArgumentParser(prog="bench_x.py")
    parser.add_argument("--rounds", type=int, default=3)
    harness.add_output_flags(parser)
    with pytest.raises(SystemExit) as stop:
        harness.parse_args(parser, ["--rounds", "5", "--parse-only"])
    assert stop.value.code == 0 and "'rounds': 5" in capsys.readouterr().out
