"""``stop_at_accuracy``: when it asks a stage to stop, stopped_at.json, bad options, and whole runs."""

from __future__ import annotations

import json

import pytest

import sftcore
from sftcore.api import Callback, RunInfo, StageInfo
from sftcore.testing import create, rejects, tiny_config


def stage_info(run_dir, name="finetune", epochs=5, has_validation=True) -> StageInfo:
    return StageInfo(name=name, stage=name.split("-")[0], seed=0, epochs=epochs, config={},
                     run=RunInfo(config={}, run_dir=run_dir), has_validation=has_validation)


def record(epoch, train=0.5, val=None) -> dict:
    return {"stage": "finetune", "seed": 0, "epoch": epoch, "train_loss": 1.0, "train_accuracy": train,
            "val_loss": None if val is None else 1.0, "val_accuracy": val}


def epochs(callback, stage, records) -> None:
    """The loop's order: the record joins the history, then on_epoch_end."""
    for r in records:
        stage.history.append(r)
        callback.on_epoch_end(stage, r)
        if stage.stop_reason is not None:
            return


def stopped_at(run_dir) -> dict:
    return json.loads((run_dir / "stopped_at.json").read_text())


# --------------------------------------------------------------------------- the decision
def test_stops_once_train_accuracy_reaches_the_threshold(tmp_path):
    callback = create("callbacks", "stop_at_accuracy", threshold=0.9)
    callback.on_run_start(RunInfo(config={}, run_dir=tmp_path))
    stage = stage_info(tmp_path)
    epochs(callback, stage, [record(1, 0.5), record(2, 0.89), record(3, 0.9), record(4, 1.0)])
    assert len(stage.history) == 3
    assert "train_accuracy" in stage.stop_reason and "0.9" in stage.stop_reason
    assert stopped_at(tmp_path) == {"finetune": 3}


def test_defaults_monitor_train_accuracy_at_099():
    callback = create("callbacks", "stop_at_accuracy")
    assert (callback.threshold, callback.monitor) == (0.99, "train_accuracy")
    assert isinstance(callback, Callback)
    assert callback.state_dict() == {}  # it decides from the record alone: nothing to save for --resume


def test_monitors_val_accuracy(tmp_path):
    callback = create("callbacks", "stop_at_accuracy", threshold=0.75, monitor="val_accuracy")
    stage = stage_info(tmp_path)
    epochs(callback, stage, [record(1, train=1.0, val=0.5), record(2, train=1.0, val=0.8), record(3)])
    assert len(stage.history) == 2 and "val_accuracy" in stage.stop_reason
    assert stopped_at(tmp_path) == {"finetune": 2}  # found through stage.run: on_run_start was not called


def test_no_validation_data_never_stops(tmp_path):
    callback = create("callbacks", "stop_at_accuracy", threshold=0.1, monitor="val_accuracy")
    stage = stage_info(tmp_path, has_validation=False)
    epochs(callback, stage, [record(e, train=1.0) for e in range(1, 5)])
    assert stage.stop_reason is None and not (tmp_path / "stopped_at.json").exists()


def test_the_last_epoch_is_no_stop_and_another_callbacks_stop_is_kept(tmp_path):
    callback = create("callbacks", "stop_at_accuracy", threshold=0.5)
    stage = stage_info(tmp_path, epochs=2)
    epochs(callback, stage, [record(1, 0.1), record(2, 1.0)])
    assert stage.stop_reason is None and not (tmp_path / "stopped_at.json").exists()
    other = stage_info(tmp_path, name="pretrain")
    other.request_stop("early_stopping: val_loss did not improve")
    callback.on_epoch_end(other, record(1, 1.0))
    assert other.stop_reason.startswith("early_stopping") and not (tmp_path / "stopped_at.json").exists()


def test_the_file_merges_stages_and_a_new_run_starts_it_afresh(tmp_path):
    (tmp_path / "stopped_at.json").write_text('{"from-an-old-run": 9}')
    callback = create("callbacks", "stop_at_accuracy", threshold=0.5)
    callback.on_run_start(RunInfo(config={}, run_dir=tmp_path))  # a new run: the old file goes
    assert not (tmp_path / "stopped_at.json").exists()
    for name, stop in (("pretrain", 2), ("finetune", 1), ("finetune-seed1", 3)):
        stage = stage_info(tmp_path, name=name)
        epochs(callback, stage, [record(e, 1.0 if e == stop else 0.1) for e in range(1, 5)])
    assert stopped_at(tmp_path) == {"pretrain": 2, "finetune": 1, "finetune-seed1": 3}
    resumed = create("callbacks", "stop_at_accuracy", threshold=0.5)
    resumed.on_run_start(RunInfo(config={}, run_dir=tmp_path, resumed=True))  # --resume keeps it
    assert stopped_at(tmp_path) == {"pretrain": 2, "finetune": 1, "finetune-seed1": 3}
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_fresh_callback_decides_as_the_first_did(tmp_path):
    """What --resume relies on: a new instance (state restored from {}) stops at the same epoch."""
    records = [record(1, 0.3), record(2, 0.7), record(3, 0.95), record(4, 0.99)]
    stops = []
    for _ in range(2):
        callback = create("callbacks", "stop_at_accuracy", threshold=0.95)
        callback.load_state_dict(callback.state_dict())
        stage = stage_info(None)  # no run directory: decides, writes nothing
        epochs(callback, stage, records)
        stops.append((len(stage.history), stage.stop_reason))
    assert stops[0] == stops[1] and stops[0][0] == 3


@pytest.mark.parametrize("options, words", [
    ({"threshold": 0}, "threshold must be a finite number > 0.0 and <= 1.0"),
    ({"threshold": 1.5}, "threshold must be"),
    ({"threshold": -0.1}, "threshold must be"),
    ({"threshold": float("nan")}, "threshold must be a finite number"),
    ({"threshold": "0.9"}, "threshold must be a finite number"),
    ({"threshold": True}, "threshold must be"),
    ({"monitor": "val_loss"}, "monitor must be one of train_accuracy, val_accuracy"),
    ({"monitor": None}, "monitor must be one of"),
    ({"treshold": 0.9}, "did you mean 'threshold'"),
])
def test_bad_options_are_one_line(options, words):
    assert words in rejects("callbacks", "stop_at_accuracy", **options)


# --------------------------------------------------------------------------- whole runs
@pytest.mark.slow
def test_stops_both_stages_of_a_run_and_writes_its_file(tmp_path):
    out = tmp_path / "run"
    config = tiny_config(epochs=4, pretrain={"epochs": 3}) | {
        "callbacks": [{"name": "stop_at_accuracy", "threshold": 0.01}]}  # reached in the first epoch
    summary = sftcore.run(config, out=out)
    assert summary["finetune"]["epochs"] == 1
    assert "stop_at_accuracy" in summary["finetune"]["stopped_early"]
    assert stopped_at(out) == {"pretrain": 1, "finetune": 1}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in records] == [("pretrain", 1), ("finetune", 1)]


@pytest.mark.slow
def test_a_callback_object_from_python_stops_the_stage_later_callbacks_see(tmp_path):
    out = tmp_path / "run"
    callback = create("callbacks", "stop_at_accuracy", threshold=0.01)

    class Seen(Callback):
        def __init__(self):
            self.stages = []

        def on_stage_end(self, stage, result):
            self.stages.append((stage.name, result["epochs"], stage.stop_reason))

    seen = Seen()
    summary = sftcore.run(tiny_config(epochs=3), out=out, callbacks=[callback, seen])
    assert summary["finetune"]["epochs"] == 1
    [(name, trained, reason)] = seen.stages
    assert (name, trained) == ("finetune", 1) and reason.startswith("train_accuracy")
    assert stopped_at(out) == {"finetune": 1}


def test_a_bad_option_in_the_config_stops_the_run_before_training(tmp_path):
    from sftcore.errors import ConfigError

    config = tiny_config() | {"callbacks": [{"name": "stop_at_accuracy", "threshold": 2}]}
    with pytest.raises(ConfigError, match=r"callbacks\[0\]\.threshold must be a finite number > 0.0 and <= 1.0"):
        sftcore.run(config, out=tmp_path / "bad")
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()
