"""The built-in callbacks (plugins/callbacks), driven directly with RunInfo/StageInfo and fake epoch records."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from sftcore._plugins.manager import get_registry
from sftcore.api import Callback, RunInfo, StageInfo
from sftcore.errors import ConfigError
from sftcore.testing import rejects
from sftcore_plugins.callbacks.csv_log import COLUMNS, CSVLog
from sftcore_plugins.callbacks.early_stopping import EarlyStopping

BUILTIN = ("csv", "tensorboard", "mlflow", "early_stopping")


def record(stage: str, epoch: int, *, seed: int = 0, val: bool = True, **values) -> dict:
    out = {"stage": stage, "seed": seed, "epoch": epoch, "train_loss": 1.0 / epoch, "train_accuracy": 0.1 * epoch,
           "penalty": None, "lr": 0.01, "trainable_params": 1234, "seconds": 0.5}
    if val:
        out.update(val_loss=2.0 / epoch, val_accuracy=0.05 * epoch)
    out.update(values)
    return out


def make_stage(run: RunInfo, name: str = "finetune", stage: str = "finetune", *, has_validation: bool = True,
               history: list | None = None, epochs: int = 10) -> StageInfo:
    return StageInfo(name=name, stage=stage, seed=0, epochs=epochs, config={}, run=run, history=list(history or []),
                     has_validation=has_validation)


def train(cb: Callback, stage: StageInfo, epochs, make=record) -> None:
    """Epochs of ``stage`` as the loop reports them: history grows before on_epoch_end."""
    for epoch in epochs:
        cb.on_epoch_start(stage, epoch)
        rec = make(stage.name, epoch)
        stage.history.append(rec)
        cb.on_epoch_end(stage, rec)
        if stage.stop_reason:
            break


# --------------------------------------------------------------------------- registry
@pytest.mark.parametrize("name", BUILTIN)
def test_registered_lazily_with_a_description(name):
    comp = get_registry().get("callbacks", name)
    assert comp.plugin and comp.description
    assert isinstance(comp.factory, str) or callable(comp.factory)
    assert issubclass(comp.load(), Callback)
    assert comp.doc().splitlines()[0]  # `sft list callbacks NAME` shows the class docstring


@pytest.mark.slow
def test_importing_the_plugin_imports_no_heavy_package():
    code = ("import sys, sftcore_plugins.callbacks; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'tensorboard', 'mlflow'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------- csv
def read_csv(path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_csv_header_and_rows(tmp_path):
    run = RunInfo(config={"name": "t"}, run_dir=tmp_path, seeds=[0])
    cb = CSVLog()
    cb.on_run_start(run)
    ft = make_stage(run)
    cb.on_stage_start(ft)
    train(cb, ft, range(1, 3))
    cb.on_stage_end(ft, {})
    base = make_stage(run, "baseline-seed1", "baseline", has_validation=False)
    cb.on_stage_start(base)
    train(cb, base, [1], make=lambda name, e: record(name, e, seed=1, val=False, penalty=0.25))
    rows = read_csv(tmp_path / "metrics.csv")
    assert tuple(rows[0]) == COLUMNS
    assert [r[:3] for r in rows[1:]] == [["finetune", "0", "1"], ["finetune", "0", "2"], ["baseline-seed1", "1", "1"]]
    row = dict(zip(COLUMNS, rows[1]))
    got = (row["train_loss"], row["val_accuracy"], row["penalty"], row["trainable_params"])
    assert got == ("1.0", "0.05", "", "1234")
    last = dict(zip(COLUMNS, rows[3]))
    assert (last["val_loss"], last["val_accuracy"], last["penalty"]) == ("", "", "0.25")


def test_csv_path_option_and_no_run_dir(tmp_path):
    cb = CSVLog(path="logs/epochs.csv")
    run = RunInfo(config={}, run_dir=tmp_path)
    cb.on_run_start(run)
    st = make_stage(run)
    cb.on_stage_start(st)
    train(cb, st, [1])
    assert len(read_csv(tmp_path / "logs" / "epochs.csv")) == 2

    nowhere = CSVLog()
    run = RunInfo(config={}, run_dir=None)
    nowhere.on_run_start(run)
    st = make_stage(run)
    nowhere.on_stage_start(st)
    train(nowhere, st, [1])  # writes nothing, raises nothing


def test_csv_resume_drops_the_epochs_trained_again(tmp_path):
    run = RunInfo(config={}, run_dir=tmp_path)
    cb = CSVLog()
    cb.on_run_start(run)
    pre = make_stage(run, "pretrain", "pretrain")
    cb.on_stage_start(pre)
    train(cb, pre, range(1, 3))
    ft = make_stage(run)
    cb.on_stage_start(ft)
    train(cb, ft, range(1, 6))  # killed after epoch 5; its checkpoint holds epoch 3
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("finetune,0,6,0.1")  # a row cut short by the kill
    before = read_csv(tmp_path / "metrics.csv")

    resumed = RunInfo(config={}, run_dir=tmp_path, resumed=True)
    again = CSVLog()
    again.on_run_start(resumed)
    ft = make_stage(resumed, history=[record("finetune", e) for e in range(1, 4)])
    again.on_stage_start(ft)
    assert read_csv(tmp_path / "metrics.csv") == before[:3 + 3]  # header, pretrain 1-2, finetune 1-3
    train(again, ft, range(4, 6), make=lambda name, e: record(name, e, lr=0.5))
    rows = read_csv(tmp_path / "metrics.csv")
    assert [(r[0], r[2]) for r in rows[1:]] == [("pretrain", "1"), ("pretrain", "2")] + [
        ("finetune", str(e)) for e in range(1, 6)]
    assert [dict(zip(COLUMNS, r))["lr"] for r in rows[-2:]] == ["0.5", "0.5"]  # the new epochs, not the stale ones


def test_csv_a_new_run_starts_a_new_file(tmp_path):
    (tmp_path / "metrics.csv").write_text("stale\n")
    cb = CSVLog()
    run = RunInfo(config={}, run_dir=tmp_path)
    cb.on_run_start(run)
    assert read_csv(tmp_path / "metrics.csv") == [list(COLUMNS)]


def test_csv_restores_rows_the_kill_lost(tmp_path):
    """Killed between metrics.jsonl and metrics.csv: the history fills the file in."""
    run = RunInfo(config={}, run_dir=tmp_path, resumed=True)
    cb = CSVLog()
    cb.on_run_start(run)
    cb.on_stage_start(make_stage(run, history=[record("finetune", 1), record("finetune", 2)]))
    assert [r[2] for r in read_csv(tmp_path / "metrics.csv")[1:]] == ["1", "2"]


@pytest.mark.parametrize("path", ["", 3, None, "dir/"])
def test_csv_rejects_bad_path(path):
    assert "path" in rejects("callbacks", "csv", path=path)


# --------------------------------------------------------------------------- tensorboard
tensorboard_missing = importlib.util.find_spec("tensorboard") is None


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.skipif(tensorboard_missing, reason="needs the tensorboard package")
def test_tensorboard_writes_scalars_and_a_resumed_stage_purges(tmp_path):
    from sftcore_plugins.callbacks.tensorboard_log import TensorBoardLog

    run = RunInfo(config={}, run_dir=tmp_path)
    cb = TensorBoardLog()
    cb.on_run_start(run)
    ft = make_stage(run, "finetune-seed1")
    cb.on_stage_start(ft)
    train(cb, ft, range(1, 5), make=lambda name, e: record(name, e, penalty=0.1 * e))
    cb.on_stage_end(ft, {})
    folder = tmp_path / "tensorboard" / "finetune-seed1"
    got = scalars(folder)
    assert set(got) == {"train/loss", "train/accuracy", "val/loss", "val/accuracy", "lr", "penalty"}
    assert [s for s, _ in got["train/loss"]] == [1, 2, 3, 4]

    resumed = RunInfo(config={}, run_dir=tmp_path, resumed=True)
    again = TensorBoardLog()
    again.on_run_start(resumed)
    ft = make_stage(resumed, "finetune-seed1", history=[record("finetune-seed1", e) for e in (1, 2)])
    again.on_stage_start(ft)
    train(again, ft, [3], make=lambda name, e: record(name, e, val=False, train_loss=42.0))
    again.on_run_end(resumed, {})
    got = scalars(folder)
    assert got["train/loss"] == [(1, 1.0), (2, 0.5), (3, 42.0)]  # epoch 4 of the killed session is gone
    assert [s for s, _ in got["val/loss"]] == [1, 2]  # no val: no val/ scalar for epoch 3


@pytest.mark.skipif(tensorboard_missing, reason="needs the tensorboard package")
def test_tensorboard_log_dir_option_and_no_run_dir(tmp_path):
    from sftcore_plugins.callbacks.tensorboard_log import TensorBoardLog

    run = RunInfo(config={}, run_dir=tmp_path / "run-a")
    cb = TensorBoardLog(log_dir=str(tmp_path / "tb"))
    st = make_stage(run)
    assert cb.folder(st) == tmp_path / "tb" / "run-a" / "finetune"
    assert TensorBoardLog().folder(make_stage(RunInfo(config={}, run_dir=None))) is None


def test_tensorboard_needs_its_package(monkeypatch):
    from sftcore_plugins.callbacks.tensorboard_log import TensorBoardLog

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError) as err:
        TensorBoardLog.validate_options("config: callbacks[0]")
    assert str(err.value) == ("callback tensorboard needs the tensorboard package: "
                              "pip install 'sftcore[tensorboard]'")
    assert "tensorboard package" in rejects("callbacks", "tensorboard")


def test_tensorboard_rejects_bad_log_dir():
    assert "log_dir" in rejects("callbacks", "tensorboard", log_dir=5)


# --------------------------------------------------------------------------- mlflow
mlflow_missing = importlib.util.find_spec("mlflow") is None


@pytest.fixture
def mlflow_env(monkeypatch):
    """No tracking URI from the environment; what the callback sets there is undone after the test."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.setenv(name, "")  # recorded, so that teardown restores the variable's absence
        monkeypatch.delenv(name)


@pytest.mark.skipif(mlflow_missing, reason="needs mlflow")
def test_mlflow_logs_params_metrics_artifacts_and_resume_continues_the_run(tmp_path, mlflow_env, monkeypatch):
    import mlflow

    from sftcore_plugins.callbacks.mlflow_log import STATE_FILE, MLflowLog

    monkeypatch.chdir(tmp_path)
    store = (tmp_path / "store").as_uri()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text("{}")
    config = {"name": "tiny", "seed": 0, "finetune": {"optimizer": {"name": "sgd", "lr": 0.01}, "note": "x" * 900,
                                                     "regularizers": [{"name": "l2", "alpha": 0.1}]}}
    run = RunInfo(config=config, run_dir=run_dir, seeds=[0])
    cb = MLflowLog(tracking_uri=store, experiment="exp")
    cb.on_run_start(run)
    run_id = json.loads((run_dir / STATE_FILE).read_text())["run_id"]
    ft = make_stage(run)
    cb.on_stage_start(ft)
    train(cb, ft, range(1, 4))  # killed after epoch 3 (no on_run_end)
    assert mlflow.active_run() is None and "MLFLOW_TRACKING_URI" not in os.environ  # no global state touched

    resumed = RunInfo(config=config, run_dir=run_dir, seeds=[0], resumed=True)
    again = MLflowLog(tracking_uri=store, experiment="exp")
    again.on_run_start(resumed)
    assert again.run_id == run_id  # the same MLflow run goes on
    ft = make_stage(resumed, history=[record("finetune", e) for e in (1, 2)])
    again.on_stage_start(ft)
    train(again, ft, [3])
    again.on_stage_end(ft, {})
    again.on_run_end(resumed, {"transfer_gain": 12.5, "finetune": {"test_accuracy": 0.75},
                               "baseline": {"test_accuracy": None}, "pretrain": "odd"})

    client = mlflow.MlflowClient(store)
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == "tiny"
    assert client.get_experiment(got.info.experiment_id).name == "exp"
    params = got.data.params
    assert params["finetune.optimizer.lr"] == "0.01" and params["finetune.regularizers.0.alpha"] == "0.1"
    assert len(params["finetune.note"]) == 500
    metrics = got.data.metrics
    assert metrics["finetune/val_accuracy"] == pytest.approx(0.15) and metrics["transfer_gain"] == 12.5
    assert metrics["finetune/test_accuracy"] == 0.75 and "baseline/test_accuracy" not in metrics
    assert "finetune/epoch" not in metrics and "finetune/penalty" not in metrics
    assert sorted(m.step for m in client.get_metric_history(run_id, "finetune/train_loss")) == [1, 2, 3, 3]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"summary.json", STATE_FILE} <= artifacts
    assert not (tmp_path / "mlruns").exists()  # the option's store, not the default one


@pytest.mark.skipif(mlflow_missing, reason="needs mlflow")
def test_mlflow_default_store_is_local_and_a_new_run_is_a_new_mlflow_run(tmp_path, mlflow_env, monkeypatch):
    import mlflow

    from sftcore_plugins.callbacks.mlflow_log import MLflowLog

    monkeypatch.chdir(tmp_path)
    run = RunInfo(config={"name": "a"}, run_dir=tmp_path / "r")
    (tmp_path / "r").mkdir()
    ids = []
    for _ in range(2):  # not resumed: a stale mlflow-run.json is not continued
        cb = MLflowLog(run_name="mine", artifacts=False)
        cb.on_run_start(run)
        ids.append(cb.run_id)
        cb.on_run_end(run, {})
    assert ids[0] != ids[1]
    client = mlflow.MlflowClient((tmp_path / "mlruns").as_uri())
    got = client.get_run(ids[1])
    assert got.info.run_name == "mine" and client.list_artifacts(ids[1]) == []


def test_mlflow_needs_its_package(monkeypatch):
    from sftcore_plugins.callbacks.mlflow_log import MLflowLog

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError) as err:
        MLflowLog.validate_options("config: callbacks[0]")
    assert str(err.value) == "callback mlflow needs the mlflow package: pip install 'sftcore[mlflow]'"


@pytest.mark.parametrize("options", [{"tracking_uri": ""}, {"experiment": ""}, {"run_name": 3}, {"artifacts": "yes"}])
def test_mlflow_rejects_bad_options(options):
    assert next(iter(options)) in rejects("callbacks", "mlflow", **options)


def test_mlflow_flatten():
    from sftcore_plugins.callbacks.mlflow_log import flatten, summary_metrics

    assert flatten({"a": {"b": 1, "c": None, "d": [1, 2]}, "e (x)": True}) == {
        "a.b": "1", "a.c": "null", "a.d": "[1, 2]", "e _x_": "True"}
    assert summary_metrics(None) == {} and summary_metrics({"transfer_gain": float("nan")}) == {}


# --------------------------------------------------------------------------- early_stopping
def losses(values, key="val_loss"):
    return lambda name, epoch: record(name, epoch, **{key: values[epoch - 1]})


def stopped_at(cb: EarlyStopping, values, key="val_loss", stage="finetune", **kw) -> int | None:
    run = RunInfo(config={}, run_dir=None)
    st = make_stage(run, stage, stage, epochs=len(values), **kw)
    cb.on_stage_start(st)
    train(cb, st, range(1, len(values) + 1), make=losses(values, key))
    return len(st.history) if st.stop_reason else None


def test_early_stopping_min_mode_stops_after_patience_epochs():
    cb = EarlyStopping(patience=2)  # val_loss: auto is min
    assert stopped_at(cb, [1.0, 0.8, 0.9, 0.85, 0.7]) == 4  # best at epoch 2; 3 and 4 did not improve
    assert stopped_at(cb, [1.0, 0.9, 0.8, 0.7, 0.6]) is None


def test_early_stopping_max_mode_and_reason():
    cb = EarlyStopping(monitor="val_accuracy", patience=3)  # auto: max
    run = RunInfo(config={}, run_dir=None)
    st = make_stage(run)
    train(cb, st, range(1, 10), make=losses([0.5, 0.6, 0.6, 0.55, 0.59, 0.7], "val_accuracy"))
    assert len(st.history) == 5
    assert st.stop_reason == "early_stopping: val_accuracy did not improve by more than 0.0 for 3 epochs"
    assert stopped_at(EarlyStopping(monitor="val_loss", mode="max", patience=1), [1.0, 0.5]) == 2


def test_early_stopping_min_delta():
    values = [1.0, 0.95, 0.92, 0.91, 0.5]
    assert stopped_at(EarlyStopping(patience=2, min_delta=0.1), values) == 3  # steps of < 0.1 are no improvement
    assert stopped_at(EarlyStopping(patience=2), values) is None


def test_early_stopping_is_stateless_so_resume_is_exact():
    """A fresh instance with the restored history decides as the one that saw every epoch."""
    values = [1.0, 0.8, 0.9, 0.85, 0.7]
    run = RunInfo(config={}, run_dir=None)
    st = make_stage(run, history=[record("finetune", e, val_loss=values[e - 1]) for e in (1, 2, 3)])
    cb = EarlyStopping(patience=2)
    cb.on_stage_start(st)
    train(cb, st, [4, 5], make=losses(values))
    assert len(st.history) == 4 and st.stop_reason


def test_early_stopping_stages_option():
    values = [1.0, 1.0, 1.0, 1.0]
    cb = EarlyStopping(monitor="train_loss", patience=1, stages=["baseline"])
    assert stopped_at(cb, values, "train_loss", stage="finetune") is None
    assert stopped_at(cb, values, "train_loss", stage="baseline") == 2
    # a stage it does not watch may lack validation data
    assert stopped_at(EarlyStopping(stages=["baseline"]), values, stage="finetune", has_validation=False) is None


def test_early_stopping_needs_validation_data_for_val_monitors():
    run = RunInfo(config={}, run_dir=None)
    with pytest.raises(ConfigError) as err:
        EarlyStopping().on_stage_start(make_stage(run, has_validation=False))
    assert str(err.value) == ("config: callbacks early_stopping monitors val_loss but stage finetune has no "
                              "validation data; set its dataset.val_fraction above 0, or monitor: train_loss")
    EarlyStopping(monitor="train_accuracy").on_stage_start(make_stage(run, has_validation=False))


@pytest.mark.parametrize("options,word", [
    ({"monitor": "test_accuracy"}, "monitor"), ({"mode": "down"}, "mode"), ({"patience": 0}, "patience"),
    ({"patience": 1.5}, "patience"), ({"patience": True}, "patience"), ({"min_delta": -0.1}, "min_delta"),
    ({"min_delta": float("nan")}, "min_delta"), ({"stages": ["finetune", "test"]}, "stages"),
    ({"stages": []}, "stages"), ({"stages": "finetune"}, "stages"), ({"patiense": 3}, "patiense"),
])
def test_early_stopping_rejects_bad_options(options, word):
    assert word in rejects("callbacks", "early_stopping", **options)


@pytest.mark.parametrize("path, expect", [
    ("/tmp/elsewhere.csv", "must stay inside the run directory"),
    ("../outside.csv", "must stay inside the run directory"),
    ("logs/../../x.csv", "must stay inside the run directory"),
    ("config.yaml", "one of the run's own files (config.yaml)"),
    ("metrics.jsonl", "one of the run's own files (metrics.jsonl)"),
    ("checkpoints/rows.csv", "one of the run's own files (checkpoints)"),
    ("summary.json", "one of the run's own files (summary.json)"),
    ("logs/", "must name a file"),
])
def test_csv_path_stays_inside_the_run_and_off_its_own_files(path, expect):
    """A callback's file never replaces a user's file or the run's own (hostile-input cases: exit 0 before)."""
    from sftcore.testing import rejects

    line = rejects("callbacks", "csv", path=path)
    assert expect in line and "path" in line


def test_a_callback_listed_twice_is_refused_at_resolve():
    from sftcore._config import resolve as cfgmod
    from sftcore.errors import ConfigError
    from sftcore.testing import registry

    from sftcore.testing import tiny_config

    cfg = tiny_config()
    cfg["callbacks"] = ["csv", {"name": "csv"}]
    with pytest.raises(ConfigError, match=r"callbacks\[1\] repeats callbacks\[0\]"):
        cfgmod.resolve(cfg, registry())
    cfg["callbacks"] = ["csv", {"name": "csv", "path": "other.csv"}]  # two files: fine
    assert len(cfgmod.resolve(cfg, registry())["callbacks"]) == 2
