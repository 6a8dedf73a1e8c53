"""An interrupted run resumes from its checkpoints and ends exactly where an uninterrupted one does."""

import signal

import pytest
import torch

import sftcore
import tiny
from sftcore._run import runner
from sftcore._train import loop as training
from sftcore.errors import ConfigError, Interrupted

CFG = {
    "name": "resume", "seed": 0, "seeds": 1, "backbone": "lenet", "device": "cpu",  # bit-exact: fp32 on the CPU
    "pretrain": {"dataset": {"name": "shapes", "task": "source", "train_per_class": 24, "test_per_class": 6},
                 "epochs": 2, "batch_size": 32},
    "finetune": {"dataset": {"name": "shapes", "task": "target", "train_per_class": 20, "test_per_class": 8,
                             "labels_per_class": 6},
                 "epochs": 4, "batch_size": 8, "head": {"name": "gradual_unfreeze"}, "regularizers": ["l2_sp"]},
    "baseline": {"name": "scratch", "max_epochs": 6, "patience": 2},  # epochs: auto, kept short
}


class Crash(Exception):
    pass


def _crash_in(monkeypatch, stage_name, after_epoch):
    """Make ``stage_name`` die right after logging ``after_epoch``, before that epoch's checkpoint."""
    original = training.Stage.run

    def run(self):
        if self.name == stage_name:
            write = self.log.write

            def write_then_die(record):
                write(record)
                if record["epoch"] == after_epoch:
                    raise Crash

            self.log.write = write_then_die
        return original(self)

    monkeypatch.setattr(training.Stage, "run", run)


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    reference = sftcore.run(CFG, out=tmp_path / "ref")
    with monkeypatch.context() as m:
        _crash_in(m, "finetune", after_epoch=3)
        with pytest.raises(Crash):
            sftcore.run(CFG, out=tmp_path / "cut")
    assert (tmp_path / "cut" / "checkpoints" / "pretrain.pt").exists()
    assert not (tmp_path / "cut" / "checkpoints" / "finetune.pt").exists()

    resumed = sftcore.run(resume=tmp_path / "cut")
    for stage in ("pretrain", "finetune", "baseline"):
        assert resumed[stage]["test_accuracy"] == reference[stage]["test_accuracy"]
        assert resumed[stage]["val_accuracy"] == reference[stage]["val_accuracy"]
        assert resumed[stage]["selected_epoch"] == reference[stage]["selected_epoch"]
    assert resumed["transfer_gain"] == reference["transfer_gain"]
    # each epoch is logged once, with exactly the values of the uninterrupted run
    assert tiny.without_seconds(tiny.read_metrics(tmp_path / "cut")) == \
        tiny.without_seconds(tiny.read_metrics(tmp_path / "ref"))
    ref_ft = [r for r in tiny.read_metrics(tmp_path / "ref") if r["stage"] == "finetune"]
    assert ref_ft[0]["trainable_params"] < ref_ft[-1]["trainable_params"]  # gradual unfreezing did unfreeze
    assert_same_weights(tmp_path / "ref", tmp_path / "cut")


def assert_same_weights(a, b, stages=("pretrain", "finetune", "baseline")):
    for stage in stages:
        wa = torch.load(a / "checkpoints" / f"{stage}.pt", weights_only=True)["model"]
        wb = torch.load(b / "checkpoints" / f"{stage}.pt", weights_only=True)["model"]
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), stage


class StopAfter:
    """Stands in for StopSignals: reports a Ctrl-C from the ``n``-th time the loop looks on."""

    name = "Ctrl-C"

    def __init__(self, n):
        self.n, self.looks = n, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    @property
    def signum(self):
        self.looks += 1
        return signal.SIGINT if self.looks >= self.n else None


@pytest.mark.slow
@pytest.mark.parametrize("looks", [5, 9, 20, 30])  # mid-epoch (pretrain, finetune), epoch ends
def test_ctrl_c_saves_mid_epoch_and_resume_is_exact(tmp_path, monkeypatch, looks):
    reference = sftcore.run(CFG, out=tmp_path / "ref")
    with monkeypatch.context() as m:
        m.setattr(runner, "StopSignals", lambda **_: StopAfter(looks))
        with pytest.raises(Interrupted) as info:
            sftcore.run(CFG, out=tmp_path / "cut")
    assert info.value.exit_code == 130
    assert f"resume with: sft run --resume {tmp_path / 'cut'}" in str(info.value)
    resumed = sftcore.run(resume=tmp_path / "cut")
    for stage in ("pretrain", "finetune", "baseline"):
        assert resumed[stage]["test_accuracy"] == reference[stage]["test_accuracy"]
    assert tiny.without_seconds(tiny.read_metrics(tmp_path / "cut")) == \
        tiny.without_seconds(tiny.read_metrics(tmp_path / "ref"))
    assert_same_weights(tmp_path / "ref", tmp_path / "cut")


@pytest.mark.slow
def test_a_mid_epoch_checkpoint_records_its_position(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "StopSignals", lambda **_: StopAfter(5))
    with pytest.raises(Interrupted, match=r"during pretrain epoch \d/2; saved the progress up to batch"):
        sftcore.run(CFG, out=tmp_path / "cut")
    state = torch.load(tmp_path / "cut" / "checkpoints" / "pretrain-last.pt", weights_only=True)
    assert state["batch"] > 0 and state["sums"][0]["seen"] == 32 * state["batch"]
    assert state["generator"] is not None and "torch" in state["rng"][0]


def test_rng_states_round_trip():
    import random

    import numpy as np

    state = training.rng_state()
    a = (torch.rand(3), random.random(), np.random.rand())
    training.set_rng_state(state)
    b = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


@pytest.mark.slow
def test_resume_needs_a_run_directory(tmp_path):
    with pytest.raises(ConfigError, match="not a run directory"):
        sftcore.run(resume=tmp_path)
    with pytest.raises(ConfigError, match="drop CONFIG"):
        sftcore.run(CFG, resume=tmp_path)
