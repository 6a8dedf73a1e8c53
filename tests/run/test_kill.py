"""A real `sft run` process, killed (SIGKILL) or interrupted (SIGINT) mid-epoch, continues with
`sft run --resume` to exactly the result of an uninterrupted run."""

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

pytestmark = pytest.mark.slow

# Enough batches per epoch that a signal lands inside one; fp32 on one CPU thread is bit-exact.
CFG = {
    "name": "kill", "seed": 3, "seeds": 1, "device": "cpu", "backbone": {"name": "lenet", "img_size": 24},
    "finetune": {"dataset": tiny.shapes("target", train_per_class=60, size=24), "epochs": 6, "batch_size": 4,
                 "head": "lp_ft", "regularizers": ["l2_sp"]},
    "baseline": {"name": "scratch", "max_epochs": 6, "patience": 2},  # epochs: auto, kept short
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sftcore", *map(str, args), "--no-progress"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(*args) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "sftcore", *map(str, args), "--no-progress"], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def wait_for_epochs(run: Path, stage: str, epochs: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until ``stage`` has logged ``epochs`` epochs (the checkpoint of the last is written right after)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, "the run ended before it could be interrupted: " + proc.stderr.read()
        metrics = run / "metrics.jsonl"
        if metrics.exists():
            done = [r for r in _records(metrics) if r.get("stage") == stage]
            if len(done) >= epochs:
                return
        time.sleep(0.005)
    raise AssertionError(f"{stage} did not reach epoch {epochs}")


def _records(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a line being written right now
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kill")
    cfg = tiny.write_yaml(folder / "cfg.yaml", CFG)
    finish("run", cfg, "--out", folder / "ref")
    return cfg, folder / "ref"


def assert_same_result(ref: Path, run: Path) -> None:
    a = json.loads((ref / "summary.json").read_text())
    b = json.loads((run / "summary.json").read_text())
    for stage in ("finetune", "baseline"):
        for key in ("test_accuracy", "val_accuracy", "selected_epoch", "train_loss"):
            assert a[stage][key] == b[stage][key], (stage, key)
    assert a["transfer_gain"] == b["transfer_gain"]
    for stage in ("finetune", "baseline"):
        wa = torch.load(ref / "checkpoints" / f"{stage}.pt", weights_only=True)["model"]
        wb = torch.load(run / "checkpoints" / f"{stage}.pt", weights_only=True)["model"]
        assert all(torch.equal(wa[k], wb[k]) for k in wa), stage
    assert tiny.without_seconds(tiny.read_metrics(ref)) == tiny.without_seconds(tiny.read_metrics(run))


def test_sigkill_mid_epoch_then_resume_is_exact(reference, tmp_path):
    cfg, ref = reference
    run = tmp_path / "run"
    proc = start("run", cfg, "--out", run)
    wait_for_epochs(run, "finetune", 2, proc)
    time.sleep(0.02)  # into epoch 3
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "summary.json").exists()
    state = torch.load(run / "checkpoints" / "finetune-last.pt", weights_only=True)
    assert state["epoch"] >= 2  # the last complete checkpoint survived the kill
    finish("run", "--resume", run)
    assert_same_result(ref, run)
    assert not list(run.rglob(".*.tmp"))  # a write the kill cut short is cleaned up on resume


def test_sigint_saves_mid_epoch_exits_130_and_resume_is_exact(reference, tmp_path):
    cfg, ref = reference
    run = tmp_path / "run"
    proc = start("run", cfg, "--out", run)
    wait_for_epochs(run, "finetune", 1, proc)
    time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = tiny.without_epoch_lines(err)
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("sft: interrupted: Ctrl-C during finetune epoch ")
    assert lines[0].endswith(f"resume with: sft run --resume {run}")
    state = torch.load(run / "checkpoints" / "finetune-last.pt", weights_only=True)
    assert state["epoch"] >= 1
    finish("run", "--resume", run)
    assert_same_result(ref, run)


def test_sigterm_is_handled_like_ctrl_c(reference, tmp_path):
    cfg, _ = reference
    run = tmp_path / "run"
    proc = start("run", cfg, "--out", run)
    wait_for_epochs(run, "finetune", 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert tiny.without_epoch_lines(err)[0].startswith("sft: interrupted: SIGTERM during finetune epoch ")


def test_a_signal_the_parent_blocked_still_reaches_the_handler():
    """A Ray worker starts its processes with SIGINT blocked; a cell must still stop on Ctrl-C."""
    from sftcore._runtime.interrupt import StopSignals

    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        with StopSignals() as stop:
            assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
            os.kill(os.getpid(), signal.SIGINT)
            deadline = time.time() + 5
            while stop.signum is None and time.time() < deadline:
                time.sleep(0.01)
            assert stop.signum == signal.SIGINT and stop.name == "Ctrl-C"
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
