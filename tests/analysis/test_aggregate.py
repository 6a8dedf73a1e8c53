"""`sft compare` grouped by varied keys and `sft plot SWEEP_DIR`, on fake run directories (no training).

Each fake run is a config.yaml and a summary.json with known per-seed test accuracies, so every mean,
sd and interval can be checked against a hand computation with the statistics module.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import subprocess
import sys

import pytest
import yaml

from sftcore._analysis.aggregate import aggregate, csv_rows, short_names, table
from sftcore._analysis.report import t975
from sftcore.errors import ConfigError, SftError
from tiny import invoke, ok, one_error_line

BASE = {
    "name": "grid", "seed": 0, "seeds": 3, "device": "cpu", "backbone": {"name": "lenet"},
    "finetune": {"dataset": {"name": "shapes", "task": "target"}, "epochs": 5,
                 "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
                 "head": {"name": "lp_ft", "probe_epochs": 10},
                 "regularizers": [{"name": "l2_sp", "alpha": 0.1, "beta": 0.01}]},
    "baseline": {"name": "scratch", "epochs": 5, "head": {"name": "reinit"}},
    "checkpoints": True, "callbacks": [],
}


def config(**changes) -> dict:
    """BASE with dotted keys changed: ``config(**{"finetune.head": {"name": "reinit"}})``."""
    cfg = copy.deepcopy(BASE)
    for key, value in changes.items():
        *path, last = key.split(".")
        node = cfg
        for part in path:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return cfg


def fake_run(path, cfg: dict, finetune: dict | None, baseline: dict | None = None):
    """A run directory: ``finetune``/``baseline`` map seed -> test accuracy (a fraction, as summary.json has
    it); ``finetune=None`` leaves the run unfinished (no summary.json)."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    if finetune is None:
        return path
    baseline = baseline or {s: 0.2 for s in finetune}
    per_seed = [{"seed": s, "finetune": {"test_accuracy": finetune[s]}, "baseline": {"test_accuracy": baseline[s]},
                 "transfer_gain": round(100 * (finetune[s] - baseline[s]), 3)} for s in finetune]
    gains = [e["transfer_gain"] for e in per_seed]
    summary = {"name": cfg["name"], "seeds": list(finetune), "per_seed": per_seed,
               "finetune": {"test_accuracy": statistics.fmean(finetune.values())},
               "baseline": {"test_accuracy": statistics.fmean(baseline.values())},
               "transfer_gain": round(statistics.fmean(gains), 3),
               "transfer_gain_ci95": round(t975(len(gains) - 1) * statistics.stdev(gains) / math.sqrt(len(gains)), 3)
               if len(gains) > 1 else None, "verdict": "made up"}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def alpha(a: float) -> dict:
    return config(**{"finetune.regularizers.0.alpha": a})


@pytest.fixture
def grid(tmp_path):
    """alpha 0.01 (seeds 0-2), alpha 0.1 split over two runs (seeds 0-1, then seed 2 with another name),
    an unfinished alpha 1.0 run."""
    runs = [
        fake_run(tmp_path / "a", alpha(0.01), {0: 0.60, 1: 0.62, 2: 0.67}, {0: 0.20, 1: 0.25, 2: 0.21}),
        fake_run(tmp_path / "b", alpha(0.1), {0: 0.70, 1: 0.71}, {0: 0.22, 1: 0.23}),
        fake_run(tmp_path / "c", {**alpha(0.1), "name": "other", "seed": 2, "seeds": 1}, {2: 0.75}, {2: 0.24}),
        fake_run(tmp_path / "d", alpha(1.0), None),
    ]
    return runs


def test_runs_group_by_the_varied_key_and_pool_their_seeds(grid):
    result = aggregate(grid)
    assert result["varied_keys"] == ["finetune.regularizers.0.alpha"]
    low, high = result["rows"]
    assert [low["cell"], high["cell"]] == [{"finetune.regularizers.0.alpha": 0.01},
                                           {"finetune.regularizers.0.alpha": 0.1}]
    assert high["runs"] == [str(grid[1]), str(grid[2])] and high["seeds"] == [0, 1, 2]
    finetune, baseline = [70.0, 71.0, 75.0], [22.0, 23.0, 24.0]
    gains = [f - b for f, b in zip(finetune, baseline)]
    assert high["finetune"]["mean"] == pytest.approx(statistics.fmean(finetune), abs=1e-4)
    assert high["finetune"]["sd"] == pytest.approx(statistics.stdev(finetune), abs=1e-4)
    assert high["baseline"]["mean"] == pytest.approx(23.0, abs=1e-4)
    assert high["gain"]["mean"] == pytest.approx(statistics.fmean(gains), abs=1e-4)
    assert high["gain"]["ci95"] == pytest.approx(4.303 * statistics.stdev(gains) / math.sqrt(3), abs=1e-4)
    assert high["gain"]["n"] == 3
    # one run alone: the same gain and interval as its own summary.json (the verdict's numbers)
    summary = json.loads((grid[0] / "summary.json").read_text())
    assert low["gain"]["mean"] == pytest.approx(summary["transfer_gain"], abs=1e-3)
    assert low["gain"]["ci95"] == pytest.approx(summary["transfer_gain_ci95"], abs=1e-3)
    assert result["failed"] == [{"run": str(grid[3]), "status": "unfinished", "error": None}]
    # name, seed and seeds never make a cell; every other key is the same in all runs
    assert result["hidden_constant_keys"] == 16


def test_one_seed_has_no_interval_and_no_sd(tmp_path):
    run = fake_run(tmp_path / "one", config(seeds=1), {0: 0.5}, {0: 0.3})
    row, = aggregate([run])["rows"]
    assert row["gain"] == {"mean": pytest.approx(20.0), "sd": None, "n": 1, "ci95": None}


def test_the_reference_row_pairs_the_others_by_seed(grid, tmp_path):
    grid.insert(0, fake_run(tmp_path / "e", alpha(0.001), {1: 0.61, 2: 0.60, 5: 0.9}))
    result = aggregate(grid, reference="finetune.regularizers.0.alpha=0.01")
    rows = result["rows"]
    assert [r["cell"]["finetune.regularizers.0.alpha"] for r in rows] == [0.001, 0.01, 0.1]  # order of first runs
    assert result["reference"]["row"] == 1 and rows[1]["vs_reference"] is None
    diffs = [71.0 - 62.0, 75.0 - 67.0, 70.0 - 60.0]  # seeds 1, 2, 0 of alpha 0.1 minus alpha 0.01
    vs = rows[2]["vs_reference"]
    assert vs["pairs"] == 3 and vs["diff_mean"] == pytest.approx(statistics.fmean(diffs), abs=1e-4)
    assert vs["diff_sd"] == pytest.approx(statistics.stdev(diffs), abs=1e-4)
    assert vs["ci95"] == pytest.approx(4.303 * statistics.stdev(diffs) / math.sqrt(3), abs=1e-4)
    assert vs["better"] is True
    only = rows[0]["vs_reference"]  # seeds 1 and 2 in common; seed 5 has no partner
    assert only["pairs"] == 2 and only["diff_mean"] == pytest.approx(((61 - 62) + (60 - 67)) / 2, abs=1e-4)
    assert only["better"] is None  # 12.7 * sd / sqrt(2) spans 0
    text = table(result)
    assert "reference" in text and "better" in text and "unclear" in text


def test_components_that_differ_by_name_are_one_compact_column(tmp_path):
    long_dataset = {"name": "image_folder", "root": "/data/" + "x" * 300}
    runs = [
        fake_run(tmp_path / "r1", config(**{"finetune.regularizers": []}), {0: 0.5}),
        fake_run(tmp_path / "r2", config(), {0: 0.6}),
        fake_run(tmp_path / "r3", config(**{"finetune.regularizers.0.alpha": 0.01}), {0: 0.6}),
        fake_run(tmp_path / "r4", config(**{"finetune.head": {"name": "reinit"}}), {0: 0.55}),
        fake_run(tmp_path / "r5", config(**{"finetune.optimizer": {"name": "adamw", "lr": 0.001,
                                                                   "weight_decay": 0.05, "betas": [0.9, 0.999]},
                                            "finetune.dataset": long_dataset}), {0: 0.4}),
    ]
    result = aggregate(runs)
    assert result["varied_keys"] == ["finetune.dataset", "finetune.optimizer", "finetune.head",
                                     "finetune.regularizers"]
    cells = [r["cell"] for r in result["rows"]]
    assert {c["finetune.regularizers"] for c in cells} == {"[]", "[l2_sp(alpha=0.1)]", "[l2_sp(alpha=0.01)]"}
    assert {c["finetune.head"] for c in cells} == {"lp_ft", "reinit"}  # probe_epochs: one value wherever it exists
    lines = table(result).splitlines()
    assert max(map(len, lines)) < 200
    assert lines[0].split()[:4] == ["dataset", "optimizer", "head", "regularizers"]
    assert "keys: dataset = finetune.dataset, optimizer = finetune.optimizer" in table(result)


def test_short_names_disambiguate():
    assert short_names(["finetune.optimizer.lr", "baseline.optimizer.lr", "finetune.head", "a.regularizers.1"]) == {
        "finetune.optimizer.lr": "finetune.lr", "baseline.optimizer.lr": "baseline.lr", "finetune.head": "head",
        "a.regularizers.1": "regularizers.1"}


def test_varied_groups_by_exactly_those_keys(grid):
    result = aggregate(grid[:3], varied=["finetune.regularizers"])
    assert result["varied_keys"] == ["finetune.regularizers"]
    row_a, row_b = result["rows"]
    assert [row_a["cell"], row_b["cell"]] == [{"finetune.regularizers": "[l2_sp(alpha=0.01)]"},
                                              {"finetune.regularizers": "[l2_sp(alpha=0.1)]"}]
    pooled = aggregate(grid[:3], varied=["finetune.head"])
    assert len(pooled["rows"]) == 1 and pooled["rows"][0]["seeds"] == [0, 0, 1, 1, 2, 2]
    assert pooled["pooled_differing_keys"] == ["finetune.regularizers.0.alpha"]
    assert "pooled in rows although they differ" in table(pooled) and "(6 results)" in table(pooled)
    with pytest.raises(ConfigError, match="varied key 'finetune.nope' is in no run"):
        aggregate(grid, varied=["finetune.nope"])


@pytest.mark.parametrize("reference, message", [
    ("finetune.regularizers.0.alpha=0.5", "matches no row; the rows are: alpha=0.01; alpha=0.1"),
    ("finetune.head=lp_ft", "matches 2 rows"),
    ("finetune.nope=1", "--reference key 'finetune.nope' is in no run's config.yaml"),
    ("alpha", "--reference 'alpha' must look like key.path=value"),
])
def test_a_bad_reference_is_one_line(grid, reference, message):
    line = one_error_line(invoke("compare", *grid[:3], "--reference", reference))
    assert message in line


def test_reference_by_short_name_component_name_and_several_pairs(tmp_path):
    runs = [fake_run(tmp_path / f"r{i}", config(**{"finetune.head": head, "finetune.regularizers": regs}),
                     {0: 0.5 + i / 100, 1: 0.5})
            for i, (head, regs) in enumerate([({"name": "reinit"}, []), ({"name": "reinit"}, [{"name": "l2"}]),
                                               ({"name": "lp_ft"}, [])])]
    def reference_run(reference):
        result = aggregate(runs, reference=reference)
        return result["rows"][result["reference"]["row"]]["runs"]

    assert reference_run("head=lp_ft") == [str(runs[2])]
    assert reference_run(["finetune.head=reinit", "finetune.regularizers=[]"]) == [str(runs[0])]
    assert reference_run("finetune.head=reinit finetune.regularizers=[l2]") == [str(runs[1])]
    assert reference_run("finetune.regularizers=[{name: l2}] finetune.head={name: reinit}") == [str(runs[1])]


def test_a_reference_on_some_grid_keys_is_one_reference_per_setting_of_the_others(tmp_path):
    """`--reference finetune.regularizers=[]` in a regularizers x head grid: each head has its own reference."""
    cells = [({"name": "reinit"}, []), ({"name": "imprint"}, []),
             ({"name": "reinit"}, [{"name": "l2"}]), ({"name": "imprint"}, [{"name": "l2"}])]
    scores = [{0: 0.50, 1: 0.52}, {0: 0.60, 1: 0.61}, {0: 0.55, 1: 0.58}, {0: 0.59, 1: 0.61}]
    runs = [fake_run(tmp_path / f"r{i}", config(**{"finetune.head": head, "finetune.regularizers": regs}), score)
            for i, ((head, regs), score) in enumerate(zip(cells, scores))]
    result = aggregate(runs, reference="finetune.regularizers=[]")
    ref = result["reference"]
    assert (ref["row"], ref["rows"], ref["per"]) == (None, [0, 1], ["finetune.head"])
    rows = result["rows"]
    assert rows[0]["vs_reference"] is None and rows[1]["vs_reference"] is None
    assert rows[2]["vs_reference"]["diff_mean"] == pytest.approx(5.5)  # l2 + reinit against [] + reinit
    assert rows[3]["vs_reference"]["diff_mean"] == pytest.approx(-0.5)  # l2 + imprint against [] + imprint
    text = table(result)
    assert text.count("reference") >= 2 and "with the same head, paired by seed" in text


def test_a_reference_among_failed_runs_keeps_the_table(tmp_path):
    runs = [fake_run(tmp_path / "a", alpha(0.1), {0: 0.5}), fake_run(tmp_path / "b", alpha(0.01), None)]
    result = aggregate(runs, reference="finetune.regularizers.0.alpha=0.01")
    assert result["reference"]["row"] is None and "matches no finished run" in table(result)


def test_compare_hides_failed_runs_unless_all(grid):
    out = ok(invoke("compare", *grid)).splitlines()
    assert out[0].split()[:3] == ["alpha", "finetune", "%"] and len(out[2].split()) >= 5
    assert out[-1] == "1 failed/unfinished run(s) hidden (--all lists them)"
    assert "16 constant config keys hidden" in out
    assert str(grid[3]) not in "\n".join(out)
    shown = ok(invoke("compare", *grid, "--all")).splitlines()
    assert shown[-1] == f"unfinished: {grid[3]}"


def test_compare_json_keeps_its_contract_and_adds_groups(grid):
    result = json.loads(ok(invoke("compare", *grid, "--json", "--reference", "alpha=0.01")))
    assert set(result) == {"differing_keys", "runs", "groups"}
    assert [r["run"] for r in result["runs"]] == list(map(str, grid))
    assert result["differing_keys"] == ["name", "seed", "seeds", "finetune.regularizers.0.alpha"]
    groups = result["groups"]
    assert groups["reference"]["row"] == 0 and groups["rows"][1]["vs_reference"]["pairs"] == 3
    assert groups == json.loads(json.dumps(aggregate(grid, reference="alpha=0.01")))


def fake_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    cells = sweep / "cells"
    fake_run(cells / "000-alpha=0.01", alpha(0.01), {0: 0.60, 1: 0.62, 2: 0.67})
    fake_run(cells / "001-alpha=0.1", alpha(0.1), {0: 0.70, 1: 0.71, 2: 0.75})
    (cells / "002-alpha=1").mkdir()  # failed before it wrote anything: only the sweep knows
    (sweep / "sweep.json").write_text(json.dumps({"cells": [
        {"name": "002-alpha=1", "status": "failed", "error": "sft: error: boom"}]}))
    return sweep


def test_a_sweep_dir_expands_to_its_cells(tmp_path):
    sweep = fake_sweep(tmp_path)
    result = aggregate([sweep])
    assert len(result["rows"]) == 2
    assert result["failed"] == [{"run": str(sweep / "cells" / "002-alpha=1"), "status": "failed",
                                 "error": "sft: error: boom"}]
    out = ok(invoke("compare", sweep, "--all"))
    assert out.splitlines()[-1] == f"failed: {sweep / 'cells' / '002-alpha=1'} (sft: error: boom)"
    data = json.loads(ok(invoke("compare", sweep, "--json")))
    assert len(data["runs"]) == 2 and len(data["groups"]["failed"]) == 1


def test_one_sweep_dir_uses_its_grid_keys_and_reference(tmp_path):
    sweep = fake_sweep(tmp_path)
    data = json.loads((sweep / "sweep.json").read_text())
    data.update(varied_keys=["finetune.regularizers"], reference="finetune.regularizers=[{name: l2_sp, alpha: 0.1}]")
    (sweep / "sweep.json").write_text(json.dumps(data))
    out = ok(invoke("compare", sweep)).splitlines()
    assert out[0].split()[0] == "regularizers" and out[0].endswith("vs ref")
    assert out[2].startswith("[l2_sp(alpha=0.01)]") and out[2].endswith("worse") and out[3].endswith("reference")
    assert ok(invoke("compare", sweep, "--reference", "finetune.regularizers.0.alpha=0.01")).splitlines()[2].endswith(
        "reference")
    assert "vs ref" not in ok(invoke("compare", sweep, sweep / "cells" / "000-alpha=0.01")).splitlines()[0]


def test_a_running_sweep_without_sweep_json_tolerates_empty_cells(tmp_path):
    """`sft sweep` aggregates its cells before it writes sweep.json; a cell that failed early has no config."""
    sweep = fake_sweep(tmp_path)
    (sweep / "sweep.json").unlink()
    (sweep / "sweep.yaml").write_text("grid: {}\n")
    cells = sorted((sweep / "cells").iterdir())
    result = aggregate(cells)
    assert len(result["rows"]) == 2 and result["failed"][0]["status"] == "unfinished"
    (sweep / "sweep.yaml").unlink()
    with pytest.raises(SftError, match="not a run directory"):  # outside a sweep, such a folder is a mistake
        aggregate(cells)


def test_csv_rows_are_flat_and_alike(grid):
    rows = csv_rows(aggregate(grid, reference="alpha=0.1"))
    assert len(rows) == 2 and rows[0].keys() == rows[1].keys()
    assert rows[1]["finetune.regularizers.0.alpha"] == 0.1 and rows[1]["seeds"] == "0 1 2"
    assert rows[0]["vs_reference_better"] is False and rows[1]["vs_reference_pairs"] is None
    assert all(not isinstance(v, (dict, list)) for row in rows for v in row.values())


def test_plot_a_sweep_draws_the_gain_per_cell(tmp_path):
    pytest.importorskip("matplotlib")
    sweep = fake_sweep(tmp_path)
    printed = ok(invoke("plot", sweep)).splitlines()
    png, numbers = sweep / "plots" / "sweep-gain.png", sweep / "plots" / "sweep-gain.csv"
    assert printed == [str(png), str(numbers)]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    lines = numbers.read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("finetune.regularizers.0.alpha,")


def test_plot_a_sweep_with_no_finished_cell_is_one_line(tmp_path):
    pytest.importorskip("matplotlib")
    sweep = tmp_path / "empty"
    (sweep / "cells" / "000-x").mkdir(parents=True)
    (sweep / "sweep.json").write_text("{}")
    assert "no finished cell" in one_error_line(invoke("plot", sweep))


@pytest.mark.slow
def test_aggregating_imports_no_torch(grid):
    code = ("import sys; from sftcore._analysis.aggregate import aggregate, table; "
            f"print(table(aggregate({[str(p) for p in grid]!r}, reference='alpha=0.1')).count('worse')); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1", "False"]


@pytest.mark.parametrize("summary", [{"per_seed": "nonsense"}, {"per_seed": [1, {"seed": "x", "finetune": 3}]},
                                     {"per_seed": [{"seed": 0, "finetune": {"test_accuracy": float("nan")}}]}])
def test_odd_summaries_give_empty_numbers_not_a_traceback(tmp_path, summary):
    run = fake_run(tmp_path / "odd", config(), None)
    (run / "summary.json").write_text(json.dumps(summary))
    row, = aggregate([run])["rows"]
    assert row["finetune"] == {"mean": None, "sd": None, "n": 0} and row["gain"]["ci95"] is None
    assert ok(invoke("compare", run)).splitlines()[2].split()[:3] == ["-", "-", "-"]


def test_a_cell_whose_folder_was_deleted_is_reported_not_dropped(tmp_path):
    """Hostile case: `rm -rf SWEEP/cells/001-...` after the sweep ran it; compare said nothing, even with --all."""
    import shutil

    sweep = fake_sweep(tmp_path)
    shutil.rmtree(sweep / "cells" / "001-alpha=0.1")
    (sweep / "sweep.json").write_text(json.dumps({"cells": [
        {"name": "000-alpha=0.01", "status": "finished"}, {"name": "001-alpha=0.1", "status": "finished"},
        {"name": "002-alpha=1", "status": "failed", "error": "sft: error: boom"}]}))
    result = aggregate([sweep])
    assert len(result["rows"]) == 1
    missing = [f for f in result["failed"] if f["run"].endswith("001-alpha=0.1")]
    assert missing and missing[0]["status"] == "missing" and "folder is gone" in missing[0]["error"]
    assert "001-alpha=0.1" in ok(invoke("compare", sweep, "--all"))
