"""`sft sweep`: the sweep file, its cells, bad input, the local and Ray executors, resume and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tiny
from sftcore._sweep.spec import cell_points, flow, short_keys, value_text

GRID = {"finetune.optimizer.lr": [0.01, 0.02], "finetune.head": ["reinit", "lp_ft"]}


def base(**stages) -> dict:
    """The tiny config with one finetune and one baseline epoch: a cell runs in a few seconds."""
    return tiny.config(finetune={"epochs": 1, **stages.get("finetune", {})},
                       baseline={"name": "scratch", "epochs": 1}, **{k: v for k, v in stages.items() if k != "finetune"})


def write_sweep(folder: Path, grid=None, name="s", **extra) -> Path:
    tiny.write_yaml(folder / "base.yaml", extra.pop("base_config", None) or base())
    return tiny.write_yaml(folder / f"{name}.yaml", {"name": name, "base": "base.yaml",
                                                     "grid": GRID if grid is None else grid, **extra})


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _text(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def cells_of(sweep_dir) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads((Path(sweep_dir) / "sweep.json").read_text())["cells"]}


# --------------------------------------------------------------------------- cells
def test_the_grid_expands_in_file_order_with_stable_names():
    points = cell_points({"finetune.regularizers.0.alpha": [0.001, 0.01], "finetune.head": ["reinit", "lp_ft", "imprint"]})
    assert [name for name, _ in points] == [
        "000-alpha=0.001-head=reinit", "001-alpha=0.001-head=lp_ft", "002-alpha=0.001-head=imprint",
        "003-alpha=0.01-head=reinit", "004-alpha=0.01-head=lp_ft", "005-alpha=0.01-head=imprint"]
    assert points[4][1] == {"finetune.regularizers.0.alpha": 0.01, "finetune.head": "lp_ft"}


def test_cell_names_tell_keys_apart_and_stay_filesystem_safe():
    assert short_keys(["finetune.epochs", "baseline.epochs", "seed"]) == ["finetune.epochs", "baseline.epochs", "seed"]
    assert value_text([]) == "none"
    assert value_text([{"name": "l2_sp", "alpha": 0.1}]) == "l2_sp_alpha0.1"
    assert value_text("a/b c") == "a_b_c"
    long = value_text("x" * 100)
    assert len(long) == 40 and long != value_text("x" * 99)
    for value in (1e-05, "yes", [{"name": "l2"}], {"name": "lp_ft", "probe_epochs": 5}, None, ""):
        import yaml

        assert yaml.safe_load(flow(value)) == value  # shown as --set takes it


def test_dry_run_prints_the_cells_and_writes_nothing(here):
    sweep = write_sweep(here, seeds=2)
    before = sorted(p.name for p in here.iterdir())
    out = tiny.ok(tiny.invoke("sweep", sweep, "--dry-run")).splitlines()
    assert out == ["000-lr=0.01-head=reinit  finetune.optimizer.lr=0.01 finetune.head=reinit",
                   "001-lr=0.01-head=lp_ft  finetune.optimizer.lr=0.01 finetune.head=lp_ft",
                   "002-lr=0.02-head=reinit  finetune.optimizer.lr=0.02 finetune.head=reinit",
                   "003-lr=0.02-head=lp_ft  finetune.optimizer.lr=0.02 finetune.head=lp_ft",
                   "4 cells, 2 seed(s) each; nothing was run (--dry-run)"]
    assert sorted(p.name for p in here.iterdir()) == before


# --------------------------------------------------------------------------- bad input
BAD = {
    "empty grid": ({"grid": {}}, "grid must be a non-empty mapping"),
    "empty list": ({"grid": {"finetune.head": []}}, "grid key 'finetune.head' has an empty list"),
    "not a list": ({"grid": {"finetune.head": "reinit"}}, "must map to a list of values"),
    "unknown key": ({"grid": {"finetune.hed": ["reinit"]}}, "did you mean 'head'"),
    "bad value": ({"grid": {"finetune.head": ["reinit", "nope"]}}, "sweep cell 001-head=nope: "),
    "no base": ({"base": None}, "base is missing"),
    "base not found": ({"base": "missing.yaml"}, "base 'missing.yaml' not found"),
    "sweep key": ({"grids": {}}, "unknown key 'grids'"),
    "reference": ({"reference": "finetune.hed=reinit"}, "'finetune.hed' is not a grid key"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sweep_files_are_one_line_before_any_cell_runs(here, case):
    change, message = BAD[case]
    tiny.write_yaml(here / "base.yaml", base())
    sweep = {"name": "s", "base": "base.yaml", "grid": {"finetune.head": ["reinit"]}, **change}
    tiny.write_yaml(here / "s.yaml", {k: v for k, v in sweep.items() if v is not None})
    line = tiny.one_error_line(tiny.invoke("sweep", "s.yaml", "--out", "out"))
    assert message in line, line
    assert not (here / "out").exists() and not (here / "runs").exists()


@pytest.mark.parametrize("args,message", [
    (["--jobs", "0"], "--jobs must be a number of 1 or more"),
    (["--jobs", "two"], "--jobs must be a number of 1 or more"),
    (["--executor", "slurm"], "--executor must be local or ray"),
    (["--gpus-per-cell", "1"], "--address and --gpus-per-cell go with --executor ray"),
])
def test_bad_options_are_one_line(here, args, message):
    sweep = write_sweep(here)
    line = tiny.one_error_line(tiny.invoke("sweep", sweep, "--out", "out", *args))
    assert message in line and not (here / "out").exists()


def test_a_directory_that_holds_no_sweep_is_refused(here):
    sweep = write_sweep(here)
    (here / "other").mkdir()
    (here / "other" / "notes.txt").write_text("mine")
    line = tiny.one_error_line(tiny.invoke("sweep", sweep, "--out", "other"))
    assert "--out 'other' is not empty and holds no sweep" in line
    line = tiny.one_error_line(tiny.invoke("sweep", "--resume", "other"))
    assert "--resume 'other' is not a sweep directory" in line
    assert sorted(p.name for p in (here / "other").iterdir()) == ["notes.txt"]


def test_a_missing_ray_is_one_line(here, monkeypatch):
    import sftcore._sweep.run as sweepmod

    monkeypatch.setattr(sweepmod, "ray_available", lambda: False)
    sweep = write_sweep(here)
    line = tiny.one_error_line(tiny.invoke("sweep", sweep, "--executor", "ray", "--out", "out"))
    assert line == "sft: error: --executor ray needs Ray: pip install 'sftcore[ray]'"
    assert not (here / "out").exists()


def test_a_ray_address_where_nothing_answers_is_one_line_before_anything_is_written(here):
    import socket

    sweep = write_sweep(here)
    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    line = tiny.one_error_line(tiny.invoke("sweep", sweep, "--executor", "ray", "--address", f"127.0.0.1:{port}",
                                           "--out", "out"))
    assert line.startswith(f"sft: error: --address 127.0.0.1:{port}: nothing answers there")
    assert "ray start --head" in line and not (here / "out").exists()


def test_a_bad_reference_in_the_file_is_named_as_the_files(here):
    sweep = write_sweep(here, grid={"finetune.head": ["reinit"]}, reference="finetune.head=lp_ft")
    line = tiny.one_error_line(tiny.invoke("sweep", sweep, "--dry-run"))
    assert f"sweep '{sweep}': reference 'finetune.head=lp_ft': lp_ft is not among the grid's values" in line
    line = tiny.one_error_line(tiny.invoke("sweep", sweep, "--dry-run", "--reference", "finetune.head=imprint"))
    assert "--reference 'finetune.head=imprint': imprint is not among" in line


@pytest.mark.slow
def test_a_closed_pipe_ends_quietly(here):
    sweep = write_sweep(here)
    proc = subprocess.Popen([sys.executable, "-m", "sftcore", "sweep", str(sweep), "--dry-run"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line, as `| head -0` would be
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) in (0, 141) and "internal error" not in err and "Traceback" not in err, err


@pytest.mark.slow
def test_the_cli_imports_no_ray():
    code = "import sys, sftcore.cli, sftcore._sweep.run; print('ray' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# --------------------------------------------------------------------------- running
@pytest.mark.slow
def test_two_cells_in_parallel_then_resume_skips_them_and_retries_only_failed(here):
    grid = {"finetune.dataset": [tiny.shapes("target", labels_per_class=6),
                                 {"name": "image_folder", "root": "no-such-folder"}]}
    sweep = write_sweep(here, grid=grid)
    result = tiny.invoke("sweep", sweep, "--jobs", "2", "--out", "sw")
    assert result.exit_code == 1, result.output
    cells = cells_of(here / "sw")
    good, bad = sorted(cells)
    assert (cells[good]["status"], cells[bad]["status"]) == ("finished", "failed")
    assert "no-such-folder" in cells[bad]["error"] and cells[bad]["returncode"] == 2
    assert (here / "sw" / cells[good]["run_dir"] / "summary.json").is_file()
    assert good in (here / "sw" / "sweep.csv").read_text()  # the results row of the finished cell
    assert "--retry-failed" in result.stderr
    summary = here / "sw" / "cells" / good / "summary.json"
    stamp, log = summary.stat().st_mtime_ns, (here / "sw" / "cells" / bad / "sweep.log")
    attempts = log.read_text().count("# sft sweep:")

    again = tiny.invoke("sweep", sweep, "--out", "sw")  # the same sweep: nothing runs
    assert again.exit_code == 1 and "0 to run" in again.stdout
    assert log.read_text().count("# sft sweep:") == attempts and summary.stat().st_mtime_ns == stamp

    retried = tiny.invoke("sweep", "--resume", "sw", "--retry-failed")
    assert retried.exit_code == 1 and "1 to run" in retried.stdout
    assert log.read_text().count("# sft sweep:") == attempts + 1 and summary.stat().st_mtime_ns == stamp


def test_a_changed_sweep_file_against_its_directory_is_one_line(here):
    sweep = write_sweep(here)
    (here / "sw").mkdir()
    (here / "sw" / "sweep.json").write_text(json.dumps({"spec": {"base": {}, "grid": {}, "seeds": None}, "cells": []}))
    line = tiny.one_error_line(tiny.invoke("sweep", sweep, "--out", "sw"))
    assert "ran a different sweep (base, grid changed)" in line
    assert sorted(p.name for p in (here / "sw").iterdir()) == ["sweep.json"]


@pytest.mark.slow
def test_ctrl_c_stops_the_running_cell_and_resume_finishes_it(here):
    # the second cell is quick; the first long enough (40 tiny epochs, a few seconds; the signal goes as soon as its
    # first checkpoint exists) and without the pretrain cache (a cached pretraining would let it finish at once)
    sweep = write_sweep(here, grid={"pretrain.epochs": [40, 1]}, base_config={**base(), "pretrain_cache": False})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sftcore", "sweep", str(sweep), "--out", "sw"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "start" in proc.stdout.readline() + proc.stdout.readline()  # the sweep's line, the first cell's
    first = here / "sw" / "cells" / "000-epochs=40"
    deadline = time.time() + 60
    while not list((first / "checkpoints").glob("*.pt")) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "sft sweep --resume sw" in err
    cells = cells_of(here / "sw")
    assert cells["000-epochs=40"]["status"] == "interrupted" and cells["001-epochs=1"]["status"] == "pending"
    resumed = tiny.invoke("sweep", "--resume", "sw")
    assert resumed.exit_code == 0, resumed.output
    assert {c["status"] for c in cells_of(here / "sw").values()} == {"finished"}
    log = (first / "sweep.log").read_text()
    assert "sft: interrupted: Ctrl-C" in log and "pretrain: resuming after epoch" in log, log  # from its checkpoint


@pytest.mark.slow
def test_sigkill_of_the_sweep_stops_its_cell_and_the_rerun_resumes_it(here):
    """The cell watches its parent: killed outright, the sweep leaves no orphan running beside the next cell,
    and the rerun resumes the cell from its checkpoint instead of failing it as "in use"."""
    sweep = write_sweep(here, grid={"pretrain.epochs": [30, 1]}, base_config={**base(), "pretrain_cache": False})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sftcore", "sweep", str(sweep), "--out", "sw"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = here / "sw" / "cells" / "000-epochs=30"
    deadline = time.time() + 60
    while not list((first / "checkpoints").glob("*.pt")) and time.time() < deadline:
        time.sleep(0.2)
    cell_pid = int((first / ".sft-lock").read_text())
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.time() + 30
    while _alive(cell_pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(cell_pid), "the cell ran on after its sweep was killed"
    assert "sft: interrupted: SIGTERM" in (first / "sweep.log").read_text()  # it saved and stopped itself
    assert cells_of(here / "sw")["000-epochs=30"]["status"] == "running"  # what the killed sweep last wrote
    resumed = tiny.invoke("sweep", "--resume", "sw")
    assert resumed.exit_code == 0, resumed.output
    cells = cells_of(here / "sw")
    assert {c["status"] for c in cells.values()} == {"finished"} and all(c["error"] is None for c in cells.values())
    assert "pretrain: resuming after epoch" in (first / "sweep.log").read_text()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@pytest.mark.slow
def test_the_ray_executor_runs_the_cells_on_a_local_instance(here):
    ray = pytest.importorskip("ray")
    sweep = write_sweep(here, grid={"finetune.head": ["reinit", "lp_ft"]})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = tiny.invoke("sweep", sweep, "--executor", "ray", "--cpus-per-cell", "1", "--out", "sw")
    finally:
        ray.shutdown()
    assert result.exit_code == 0, result.output
    data = json.loads((here / "sw" / "sweep.json").read_text())
    assert data["executor"] == "ray" and {c["status"] for c in data["cells"]} == {"finished"}
    assert all((here / "sw" / c["run_dir"] / "summary.json").is_file() for c in data["cells"])


@pytest.mark.slow
def test_ctrl_c_under_ray_stops_the_cell_cleanly(here):
    """Without --address the sweep starts its own Ray instance; a Ctrl-C reaches the running task (through a
    stop file on the shared path), which passes it on to its cell."""
    pytest.importorskip("ray")
    slow = base(pretrain={"epochs": 100, "dataset": tiny.shapes("source", train_per_class=100)})
    sweep = write_sweep(here, grid={"pretrain.epochs": [100, 1]}, base_config=slow)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sftcore", "sweep", str(sweep), "--executor", "ray",
                             "--cpus-per-cell", "1", "--out", "sw"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    cell = here / "sw" / "cells" / "000-epochs=100"
    deadline = time.time() + 90
    while "pretrain epoch 3/" not in _text(cell / "sweep.log") and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, (out, err)
    cells = cells_of(here / "sw")
    assert cells["000-epochs=100"]["status"] == "interrupted", (cells, out, err)
    assert cells["001-epochs=1"]["status"] in ("finished", "pending", "interrupted")  # never left running
    assert not (cell / ".sft-sweep-stop").exists()
    assert "sft: interrupted: Ctrl-C" in (cell / "sweep.log").read_text()  # the cell saved and stopped itself


def test_grid_keys_that_differ_only_in_spaces_and_seeds_twice_are_refused(tmp_path):
    """Hostile sweep files: two keys merged into one (a list of values lost), seeds set twice (one ignored)."""
    import yaml

    from sftcore._sweep.spec import load_sweep
    from sftcore.errors import ConfigError

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": tiny.config(pretrain=False),
                                    "grid": {"finetune.epochs": [1], "finetune.epochs ": [2]}}))
    with pytest.raises(ConfigError, match="given twice"):
        load_sweep(path)
    path.write_text(yaml.safe_dump({"base": tiny.config(pretrain=False), "seeds": 2,
                                    "grid": {"seeds": [1, 2]}}))
    with pytest.raises(ConfigError, match="seeds is both a grid key and the sweep's own seeds"):
        load_sweep(path)


def test_a_huge_sweep_file_is_refused_quickly_and_not_called_an_alias_bomb(tmp_path):
    from sftcore._fileio.yaml_reader import load_yaml
    from sftcore.errors import ConfigError

    path = tmp_path / "huge.yaml"
    path.write_text("grid:\n  finetune.epochs: [" + ", ".join(["1"] * 1_000_000) + "]\n")
    with pytest.raises(ConfigError) as err:  # refused by its size, before PyYAML builds a million nodes
        load_yaml(path)
    assert "alias" not in str(err.value) and "bytes" in str(err.value)
    path.write_text("grid:\n  finetune.epochs: [" + ",".join(["1"] * 100_500) + "]\n")  # under the byte limit
    with pytest.raises(ConfigError) as err:
        load_yaml(path)
    assert "holds over 100,000 values" in str(err.value) and "alias" not in str(err.value)


def test_the_sweep_says_the_threads_each_cell_gets(monkeypatch):
    """A user's OMP_NUM_THREADS does not reach the cells (each gets --cpus-per-cell): the first line says so."""
    from sftcore._sweep.run import Options, _threads_text

    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert _threads_text(Options(cpus_per_cell=1)) == "1 thread(s) per cell (not OMP_NUM_THREADS=7: --cpus-per-cell sets it)"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert _threads_text(Options(cpus_per_cell=1)) == "1 thread(s) per cell"
