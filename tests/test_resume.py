"""An interrupted run resumes from its checkpoints and ends exactly where an uninterrupted one does."""

import json

import pytest

import sftcore
from sftcore import training
from sftcore.errors import ConfigError

CFG = {
    "name": "resume", "seed": 0, "backbone": "lenet", "device": "cpu",  # bit-exact: fp32 on the CPU
    "pretrain": {"dataset": {"name": "shapes", "task": "source", "train_per_class": 24, "test_per_class": 6},
                 "epochs": 2, "batch_size": 32},
    "finetune": {"dataset": {"name": "shapes", "task": "target", "train_per_class": 20, "test_per_class": 8,
                             "labels_per_class": 6},
                 "epochs": 4, "batch_size": 8, "head": {"name": "gradual_unfreeze"}, "regularizers": ["l2_sp"]},
    "baseline": "scratch",
}


class Interrupted(Exception):
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
                    raise Interrupted

            self.log.write = write_then_die
        return original(self)

    monkeypatch.setattr(training.Stage, "run", run)


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    reference = sftcore.run(CFG, out=tmp_path / "ref")
    with monkeypatch.context() as m:
        _crash_in(m, "finetune", after_epoch=3)
        with pytest.raises(Interrupted):
            sftcore.run(CFG, out=tmp_path / "cut")
    assert (tmp_path / "cut" / "checkpoints" / "pretrain.pt").exists()
    assert not (tmp_path / "cut" / "checkpoints" / "finetune.pt").exists()

    resumed = sftcore.run(resume=tmp_path / "cut")
    for stage in ("pretrain", "finetune", "baseline"):
        assert resumed[stage]["test_accuracy"] == reference[stage]["test_accuracy"]
        assert resumed[stage]["val_accuracy"] == reference[stage]["val_accuracy"]
        assert resumed[stage]["selected_epoch"] == reference[stage]["selected_epoch"]
    assert resumed["transfer_gain"] == reference["transfer_gain"]
    # the gradual unfreeze state after resuming is the one of the epoch, not of a fresh start
    ref_rows = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    cut_rows = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    ref_ft = {r["epoch"]: r for r in ref_rows if r["stage"] == "finetune"}
    cut_ft = {r["epoch"]: r for r in cut_rows if r["stage"] == "finetune"}  # last write of an epoch wins
    assert sorted(cut_ft) == [1, 2, 3, 4]
    for epoch in (3, 4):
        assert cut_ft[epoch]["trainable_params"] == ref_ft[epoch]["trainable_params"]
        assert cut_ft[epoch]["train_loss"] == pytest.approx(ref_ft[epoch]["train_loss"], rel=1e-5)
    assert ref_ft[1]["trainable_params"] < ref_ft[4]["trainable_params"]


def test_resume_needs_a_run_directory(tmp_path):
    with pytest.raises(ConfigError, match="not a run directory"):
        sftcore.run(resume=tmp_path)
    with pytest.raises(ConfigError, match="drop CONFIG"):
        sftcore.run(CFG, resume=tmp_path)
