"""Data-parallel runs under torchrun with two CPU processes (gloo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import tiny
from sftcore.api import ImageSet
from sftcore._data.batches import Batches

pytestmark = pytest.mark.slow
HERE = Path(__file__).resolve().parents[1]  # tests/: ddp_probe.py
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# Learns within seconds, so that accuracies say something; augmentation on, so that sharded
# augmentation is exercised; lp_ft + l2_sp + backbone_lr_mult: the frozen-backbone case under DDP.
CFG = {
    "name": "ddp", "seed": 0, "seeds": 1, "device": "cpu", "backbone": {"name": "lenet", "img_size": 16},
    "pretrain": {"dataset": tiny.shapes("source"), "epochs": 3, "batch_size": 32,
                 "optimizer": {"name": "sgd", "lr": 0.05}},
    "finetune": {"dataset": tiny.shapes("target"), "epochs": 6, "batch_size": 16,
                 "optimizer": {"name": "sgd", "lr": 0.05}, "head": {"name": "lp_ft", "probe_epochs": 2},
                 "regularizers": ["l2_sp"], "backbone_lr_mult": 0.1, "select": "last"},
    "baseline": {"name": "scratch", "max_epochs": 6, "patience": 2},  # epochs: auto, kept short
}


def torchrun(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           *map(str, args)], env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same config with one process and with `sft run --nproc 2`."""
    folder = tmp_path_factory.mktemp("ddp")
    cfg = tiny.write_yaml(folder / "cfg.yaml", CFG)
    one = subprocess.run([sys.executable, "-m", "sftcore", "run", cfg, "--out", folder / "one", "--no-progress"],
                         env=ENV, capture_output=True, text=True, timeout=300, cwd=folder)
    assert one.returncode == 0, one.stderr
    (folder / "two").mkdir()
    two = subprocess.run([sys.executable, "-m", "sftcore", "run", cfg, "--nproc", "2", "--no-progress"],
                         env=ENV, capture_output=True, text=True, timeout=300, cwd=folder / "two")
    assert two.returncode == 0, two.stderr
    return folder, two


def test_two_processes_write_exactly_one_run_directory(runs):
    folder, proc = runs
    made = list((folder / "two" / "runs").iterdir())
    assert len(made) == 1 and made[0].name.startswith("ddp-")
    assert sorted(p.name for p in (folder / "two").iterdir()) == ["runs"]  # nothing else, anywhere
    assert proc.stdout.count("run directory:") == 1  # one rank prints
    lines = [json.loads(line) for line in (made[0] / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in lines] == \
        [("pretrain", e) for e in range(1, 4)] + [(s, e) for s in ("finetune", "baseline") for e in range(1, 7)]
    summary = json.loads((made[0] / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert json.loads((folder / "one" / "summary.json").read_text())["world_size"] == 1


def _weights(run: Path, stage: str) -> dict:
    return torch.load(run / "checkpoints" / f"{stage}.pt", weights_only=True)["model"]


def _dist(a: dict, b: dict, keys) -> float:
    return float(torch.sqrt(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in keys)))


def test_two_processes_match_one_with_the_same_global_batch(runs):
    """Same global batches, same augmentation draws, same gradients (each rank's loss is weighted by
    its share of the batch): the runs differ only in float rounding, because the gradient is summed
    across ranks in another order. LeNet has no batch norm, whose statistics would otherwise be
    computed per rank. So the weights end up a tiny fraction of the distance training moved them
    apart, and the accuracies agree to within an example or two (rounding can flip a close call)."""
    folder, _ = runs
    one, two = folder / "one", next((folder / "two" / "runs").iterdir())
    pre1, pre2 = _weights(one, "pretrain"), _weights(two, "pretrain")
    ft1, ft2 = _weights(one, "finetune"), _weights(two, "finetune")
    backbone = [k for k in ft1 if k.startswith("backbone.")]
    moved = _dist(ft1, pre1, backbone)  # how far finetuning moved the backbone
    assert moved > 1e-3
    assert _dist(ft1, ft2, backbone) <= 1e-3 * moved
    assert _dist(ft1, ft2, ft1) <= 1e-4 * float(torch.sqrt(sum((v.double() ** 2).sum() for v in ft1.values())))
    assert _dist(pre1, pre2, pre1) <= 1e-4 * float(torch.sqrt(sum((v.double() ** 2).sum() for v in pre1.values())))
    a = json.loads((one / "summary.json").read_text())
    b = json.loads((two / "summary.json").read_text())
    for stage in ("pretrain", "finetune", "baseline"):
        assert abs(a[stage]["test_accuracy"] - b[stage]["test_accuracy"]) <= 0.04, stage
        assert a[stage]["train_examples"] == b[stage]["train_examples"]
    ma, mb = tiny.read_metrics(one), tiny.read_metrics(two)
    assert ma[0]["train_loss"] == pytest.approx(mb[0]["train_loss"], rel=1e-5)
    for ra, rb in zip(ma, mb):
        assert ra["trainable_params"] == rb["trainable_params"]  # lp_ft froze the same parts
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-3)


def test_probe_in_a_real_process_group(tmp_path):
    out = tmp_path / "probe.json"
    proc = torchrun(HERE / "ddp_probe.py", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["world"] == 2
    # every example once per epoch, in the global batches a single process takes
    assert r["sharded_batches"] == r["single_batches"]
    assert r["lengths"][0] == r["lengths"][1] == len(r["single_batches"])
    assert r["augment_max_diff"] == 0.0
    # the ranks hold the same weights after lp_ft unfroze the backbone (DDP rebuilt in time) ...
    assert r["params"][0] == r["params"][1]
    assert r["moved_backbone"][0] > 0  # ... and the backbone did train after the probe epoch
    # L2-SP's w0 and penalty are the same on every rank
    assert r["start_sums"][0] == r["start_sums"][1]
    assert r["penalties"][0] == r["penalties"][1] > 0
    assert r["history"][0]["trainable_params"] < r["history"][-1]["trainable_params"]
    assert r["eval_same"]
    assert r["bn_state"][0] == r["bn_state"][1]


def test_resume_under_torchrun_after_a_kill(runs, tmp_path):
    folder, _ = runs
    reference = next((folder / "two" / "runs").iterdir())
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "sftcore", "run", folder / "cfg.yaml", "--out", run, "--no-progress"],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    end = time.monotonic() + 120
    while time.monotonic() < end and not (run / "checkpoints" / "finetune-last.pt").exists():
        assert proc.poll() is None
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks
    proc.wait()
    assert not (run / "summary.json").exists()
    done = torchrun("-m", "sftcore", "run", "--resume", run, "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    a = json.loads((reference / "summary.json").read_text())
    b = json.loads((run / "summary.json").read_text())
    for stage in ("pretrain", "finetune", "baseline"):
        assert a[stage]["test_accuracy"] == b[stage]["test_accuracy"], stage
    wa = torch.load(reference / "checkpoints" / "finetune.pt", weights_only=True)["model"]
    wb = torch.load(run / "checkpoints" / "finetune.pt", weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_batch_too_small_for_the_processes_is_a_config_error(tmp_path):
    cfg = tiny.write_yaml(tmp_path / "cfg.yaml", {**CFG, "finetune": {**CFG["finetune"], "batch_size": 3}})
    proc = subprocess.run([sys.executable, "-m", "sftcore", "run", cfg, "--nproc", "2"], env=ENV,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "sft: error: config: finetune.batch_size is 3, the global batch of 2 processes; each needs at least 2 "
        "examples: use 4 or more"]


def start_nproc(*args, cwd) -> subprocess.Popen:
    """`sft run --nproc 2` as a terminal would start it: in its own process group, which a Ctrl-C reaches."""
    return subprocess.Popen([sys.executable, "-m", "sftcore", "run", *map(str, args), "--nproc", "2",
                             "--no-progress"], env=ENV, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.01)
    assert path.exists()


def test_ctrl_c_under_nproc_saves_mid_epoch_and_resume_is_exact(runs, tmp_path):
    folder, _ = runs
    reference = next((folder / "two" / "runs").iterdir())
    run = tmp_path / "run"
    proc = start_nproc(folder / "cfg.yaml", "--out", run, cwd=tmp_path)
    wait_for(run / "checkpoints" / "finetune-last.pt", proc)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the launcher's group only
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = tiny.without_epoch_lines(err)  # rank 0's epoch lines come through, as in one process
    assert len(lines) == 1, err  # one line, though both ranks said it
    assert lines[0].startswith("sft: interrupted: Ctrl-C during finetune epoch ")
    assert lines[0].endswith(f"resume with: sft run --resume {run}")
    assert all(" epoch " in x for x in err.strip().splitlines() if x not in lines)
    done = subprocess.run([sys.executable, "-m", "sftcore", "run", "--resume", run, "--nproc", "2", "--no-progress"],
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    a = json.loads((reference / "summary.json").read_text())
    b = json.loads((run / "summary.json").read_text())
    for stage in ("pretrain", "finetune", "baseline"):
        assert a[stage]["test_accuracy"] == b[stage]["test_accuracy"], stage
    for stage in ("finetune", "baseline"):
        wa, wb = _weights(reference, stage), _weights(run, stage)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), stage
    assert tiny.without_seconds(tiny.read_metrics(reference)) == tiny.without_seconds(tiny.read_metrics(run))


def test_sigterm_to_the_launcher_stops_every_process(runs, tmp_path):
    folder, _ = runs
    run = tmp_path / "run"
    proc = start_nproc(folder / "cfg.yaml", "--out", run, "--no-cache", cwd=tmp_path)  # it pretrains
    wait_for(run / "checkpoints" / "pretrain-last.pt", proc)
    proc.send_signal(signal.SIGTERM)  # a container runtime signals the main process only
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert tiny.without_epoch_lines(err)[0].startswith("sft: interrupted: SIGTERM during "), err
    size = (run / "metrics.jsonl").stat().st_size
    time.sleep(1.0)
    assert (run / "metrics.jsonl").stat().st_size == size  # no orphaned worker trains on
    assert not (run / "summary.json").exists()


def test_nproc_shortcut_reports_a_config_error_once(tmp_path):
    bad = tiny.write_yaml(tmp_path / "bad.yaml", {**CFG, "seed": -1})
    proc = subprocess.run([sys.executable, "-m", "sftcore", "run", bad, "--nproc", "2"], env=ENV,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["sft: error: config: seed must be >= 0, got -1"]
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- sharding without a process group
def shards(n: int, batch: int, world: int, epoch: int = 0):
    data = ImageSet(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n))
    out = []
    for rank in range(world):
        b = Batches(data, batch, torch.device("cpu"), shuffle=True, seed=1)
        b.rank, b.world = rank, world
        b.set_epoch(epoch)
        out.append([y.tolist() for _, y in b])
    return out


@pytest.mark.parametrize("n, batch, world", [(37, 8, 2), (40, 8, 2), (41, 8, 4), (9, 6, 3), (100, 7, 3), (13, 4, 2)])
def test_shards_cover_each_example_once(n, batch, world):
    per_rank = shards(n, batch, world)
    lengths = {len(r) for r in per_rank}
    assert len(lengths) == 1  # every rank takes the same number of steps
    taken = [i for r in per_rank for b in r for i in b]
    assert len(taken) == len(set(taken))
    dropped = n - len(taken)
    assert dropped == 0 or (0 < dropped < 2 * world and dropped == n % batch)
    for step in zip(*per_rank):
        assert all(len(b) >= 2 for b in step) and max(map(len, step)) - min(map(len, step)) <= 1


def test_epoch_lines_come_once_per_epoch_from_rank_0(runs):
    _, two = runs
    lines = [x for x in two.stderr.splitlines() if " epoch " in x and ": loss " in x]
    pretrain = [x.split(":")[0] for x in lines if x.startswith("pretrain ")]
    assert pretrain == [f"pretrain epoch {e}/3" for e in (1, 2, 3)]


@pytest.mark.slow
def test_callbacks_under_nproc_stop_every_rank_and_a_callback_error_ends_every_rank(tmp_path):
    """early_stopping decides on rank 0 and every rank stops after the same epoch; a ConfigError from a
    callback (early_stopping on val_loss without validation data) ends both processes with one line."""
    stop = {"name": "early_stopping", "monitor": "train_loss", "patience": 1, "min_delta": 10.0}
    cfg = tiny.write_yaml(tmp_path / "c.yaml", {**CFG, "pretrain": None, "baseline": None, "callbacks": ["csv", stop]})
    proc = subprocess.run([sys.executable, "-m", "sftcore", "run", cfg, "--nproc", "2", "--out", tmp_path / "r"],
                          env=ENV, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["finetune"]["epochs"] == 2 and "early_stopping" in summary["finetune"]["stopped_early"]
    assert len((tmp_path / "r" / "metrics.csv").read_text().splitlines()) == 1 + 2  # rank 0 alone wrote it
    bad = dict(stop, monitor="val_loss")
    ft = {**CFG["finetune"], "dataset": {**tiny.shapes("target"), "val_fraction": 0}}
    cfg = tiny.write_yaml(tmp_path / "bad.yaml", {**CFG, "pretrain": None, "baseline": None, "finetune": ft,
                                                   "callbacks": [bad]})
    proc = subprocess.run([sys.executable, "-m", "sftcore", "run", cfg, "--nproc", "2", "--out", tmp_path / "b"],
                          env=ENV, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert tiny.without_epoch_lines(proc.stderr) == [
        line for line in tiny.without_epoch_lines(proc.stderr) if line.startswith("sft: error: config: callbacks")]
    assert len(tiny.without_epoch_lines(proc.stderr)) == 1
