"""The loop opened to plugins: callbacks (events, failures, stops, state across --resume), param_groups,
optimizers and schedules as components, epoch lines, and a head strategy run through the loop's sequence."""

from __future__ import annotations

import pytest
import torch

import sftcore
import tiny
from sftcore._train import loop as training
from sftcore.api import Callback, HeadStrategy
from sftcore.errors import ConfigError
from sftcore.testing import strategy_epochs, tiny_config


def cfg(**finetune):
    return tiny_config(baseline=True, epochs=2, **finetune)


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_run_start(self, run):
        self.events.append(("run_start", run.run_dir is not None))

    def on_stage_start(self, stage):
        self.events.append(("stage_start", stage.name, len(stage.history)))

    def on_epoch_start(self, stage, epoch):
        self.events.append(("epoch_start", stage.name, epoch))

    def on_epoch_end(self, stage, record):
        assert stage.history[-1] is record and stage.model is not None
        self.events.append(("epoch_end", stage.name, record["epoch"]))

    def on_stage_end(self, stage, result):
        self.events.append(("stage_end", stage.name, result["test_accuracy"] is not None))

    def on_run_end(self, run, summary):
        self.events.append(("run_end", "transfer_gain" in summary))


@pytest.mark.slow
def test_events_come_in_order_with_their_arguments(tmp_path):
    rec = Recorder()
    sftcore.run(cfg(), out=tmp_path / "r", callbacks=[rec])
    expected = [("run_start", True)]
    for stage in ("finetune", "baseline"):
        expected.append(("stage_start", stage, 0))
        for epoch in (1, 2):
            expected += [("epoch_start", stage, epoch), ("epoch_end", stage, epoch)]
        expected.append(("stage_end", stage, True))
    expected.append(("run_end", True))
    assert rec.events == expected


class Steps(Callback):
    def __init__(self):
        self.starts, self.losses = [], []

    def on_step_start(self, stage, epoch, step):
        self.starts.append((stage.name, epoch, step))

    def on_step_end(self, stage, epoch, step, loss):
        assert loss.ndim == 0 and not loss.requires_grad
        self.losses.append(float(loss))


@pytest.mark.slow
def test_step_events_reach_only_callbacks_that_define_them(tmp_path):
    steps = Steps()
    summary = sftcore.run(tiny_config(epochs=2), out=tmp_path / "r", callbacks=[steps, Recorder()])
    per_epoch = len([s for s in steps.starts if s[1] == 1])
    assert per_epoch >= summary["finetune"]["train_examples"] // 8
    assert len(steps.starts) == len(steps.losses) == 2 * per_epoch
    assert steps.starts[0] == ("finetune", 1, 0) and steps.starts[-1][1] == 2
    assert all(loss == loss for loss in steps.losses)  # finite numbers
    from sftcore._train.events import Events

    assert Events([("r", Recorder())]).per_step is False and Events([("s", Steps())]).per_step is True


class Broken(Callback):
    def __init__(self):
        self.calls = 0

    def on_epoch_end(self, stage, record):
        self.calls += 1
        raise OSError("disk full")


@pytest.mark.slow
def test_a_failing_callback_is_one_warning_and_the_run_goes_on(tmp_path, capsys):
    broken, rec = Broken(), Recorder()
    summary = sftcore.run(cfg(), out=tmp_path / "r", callbacks=[broken, rec])
    assert broken.calls == 1  # switched off after its failure
    assert ("run_end", True) in rec.events  # the others still hear everything
    [line] = summary["callback_errors"]
    assert "Broken" in line and "on_epoch_end" in line and "OSError: disk full" in line
    err = [x for x in capsys.readouterr().err.splitlines() if "disk full" in x]
    assert len(err) == 1 and err[0].startswith("sft: warning: callback") and "off for the rest of the run" in err[0]
    assert summary["transfer_gain"] is not None


class Misconfigured(Callback):
    def on_stage_start(self, stage):
        raise ConfigError("config: callbacks: this one needs validation data")


@pytest.mark.slow
def test_a_config_error_from_a_callback_stops_the_run_with_its_line(tmp_path):
    with pytest.raises(ConfigError, match="needs validation data"):
        sftcore.run(cfg(), out=tmp_path / "r", callbacks=[Misconfigured()])


class StopAt(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, stage, record):
        if record["epoch"] == self.epoch and stage.stage == "finetune":
            stage.request_stop(f"stop at {self.epoch}")


@pytest.mark.slow
def test_a_callback_can_stop_a_stage_after_an_epoch(tmp_path):
    summary = sftcore.run(tiny_config(epochs=5), out=tmp_path / "r", callbacks=[StopAt(2)])
    ft = summary["finetune"]
    assert ft["epochs"] == 2 and ft["stopped_early"] == "stop at 2"
    assert [r["epoch"] for r in tiny.read_metrics(tmp_path / "r")] == [1, 2]


@pytest.mark.slow
def test_early_stopping_from_the_config(tmp_path):
    summary = sftcore.run(tiny_config(epochs=30, select="best") | {
        "callbacks": [{"name": "early_stopping", "monitor": "train_loss", "patience": 1, "min_delta": 10.0}]},
        out=tmp_path / "r")
    ft = summary["finetune"]
    assert ft["epochs"] == 2 and "early_stopping" in ft["stopped_early"]  # nothing beats the first by 10


class Counter(Callback):
    """Counts the epochs it saw, per stage; the count must survive an interruption exactly."""

    def __init__(self):
        self.count = 0

    def on_epoch_end(self, stage, record):
        self.count += 1

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


class Crash(Exception):
    pass


@pytest.mark.slow
def test_callback_state_is_saved_in_checkpoints_and_restored_on_resume(tmp_path, monkeypatch):
    config = tiny_config(epochs=4)
    whole = Counter()
    sftcore.run(config, out=tmp_path / "ref", callbacks=[whole])
    original = training.Stage._save

    def crash_at_epoch_3(self, epoch, batch=0, sums=None):
        if epoch == 3 and not batch:
            raise Crash  # after epoch 3 was logged and told, before its checkpoint
        return original(self, epoch, batch, sums)

    first = Counter()
    with monkeypatch.context() as m:
        m.setattr(training.Stage, "_save", crash_at_epoch_3)
        with pytest.raises(Crash):
            sftcore.run(config, out=tmp_path / "cut", callbacks=[first])
    assert first.count == 3
    second = Counter()
    sftcore.run(resume=tmp_path / "cut", callbacks=[second])
    assert second.count == whole.count == 4  # restored to 2 (the epoch-2 checkpoint), then epochs 3 and 4


@pytest.mark.slow
def test_epoch_lines_reach_echo(tmp_path):
    lines = []
    sftcore.run(tiny_config(epochs=2), out=tmp_path / "r", echo=lines.append)
    epochs = [x for x in lines if " epoch " in x]
    assert [x.split(":")[0] for x in epochs] == ["finetune epoch 1/2", "finetune epoch 2/2"]
    assert all("loss " in x and "train_acc " in x and "val_acc " in x and x.endswith(" s)") for x in epochs)
    assert lines[-1].startswith("run directory:")


@pytest.mark.slow
def test_sftcore_run_prints_nothing_without_echo(tmp_path, capsys):
    sftcore.run(tiny_config(epochs=1), out=tmp_path / "r")
    assert capsys.readouterr().out == ""


# --------------------------------------------------------------------------- param_groups, optimizers, schedules
def _group_lrs(out):
    state = torch.load(out / "checkpoints" / "finetune-last.pt", weights_only=False)
    return [g["lr"] for g in state["optimizer"]["param_groups"]]


@pytest.mark.slow
def test_layer_decay_composes_with_a_head_strategy_in_a_run(tmp_path):
    config = tiny_config(epochs=2, head="gradual_unfreeze", schedule="none",
                         param_groups={"name": "layer_decay", "decay": 0.5})
    resolved = sftcore.run(config, out=tmp_path / "ld")
    lrs = sorted(set(_group_lrs(tmp_path / "ld")))
    assert len(lrs) >= 3 and max(lrs) == pytest.approx(0.01) and min(lrs) < 0.01 * 0.5 ** 2 * 1.001
    assert resolved["finetune"]["epochs"] == 2


@pytest.mark.slow
def test_default_param_groups_are_the_head_strategys(tmp_path):
    sftcore.run(tiny_config(epochs=1, schedule="none", backbone_lr_mult=0.1), out=tmp_path / "a")
    sftcore.run(tiny_config(epochs=1, schedule="none", param_groups={"name": "backbone_head",
                                                                      "backbone_lr_mult": 0.1}), out=tmp_path / "b")
    assert _group_lrs(tmp_path / "a") == _group_lrs(tmp_path / "b")
    assert sorted(set(_group_lrs(tmp_path / "a"))) == pytest.approx([0.001, 0.01])


def test_resolved_config_fills_optimizer_and_schedule_options_from_the_factories():
    from sftcore._config import resolve as cfgmod
    from sftcore._plugins.manager import get_registry

    ft = cfgmod.resolve(tiny_config(optimizer={"name": "adam"}, schedule="one_cycle"), get_registry())["finetune"]
    assert ft["optimizer"]["name"] == "adam" and ft["optimizer"]["betas"] == [0.9, 0.999] and "lr" in ft["optimizer"]
    assert ft["schedule"]["name"] == "one_cycle" and "pct_start" in ft["schedule"]
    with pytest.raises(ConfigError, match=r"^config: finetune\.optimizer: unknown optimizer 'sgdd'.*sgd"):
        cfgmod.resolve(tiny_config(optimizer={"name": "sgdd"}), get_registry())
    with pytest.raises(ConfigError, match=r"finetune\.optimizer.*has no option 'momentum'"):
        cfgmod.resolve(tiny_config(optimizer={"name": "adamw", "momentum": 0.9}), get_registry())


def test_a_plugins_config_error_gets_the_config_path_in_front(plugin):
    from sftcore import hookimpl
    from sftcore._config import resolve as cfgmod
    from sftcore._plugins.manager import get_registry

    def picky(alpha: float = 1.0):
        """Refuses negative alpha without knowing where it was configured."""
        if alpha < 0:
            raise ConfigError("alpha must be >= 0")
        return HeadStrategy()

    class Plugin:
        @staticmethod
        @hookimpl
        def register_heads(register):
            register("t_picky", picky)

    plugin(Plugin, "t-picky")
    with pytest.raises(ConfigError) as info:
        cfgmod.resolve(tiny_config(head={"name": "t_picky", "alpha": -1}), get_registry())
    assert str(info.value) == "config: finetune.head: alpha must be >= 0"


# --------------------------------------------------------------------------- sftcore.testing.strategy_epochs
@pytest.mark.parametrize("name", ["reinit", "linear_probe", "lp_ft", "gradual_unfreeze", "imprint"])
def test_every_builtin_head_strategy_composes_with_layer_decay(name):
    from sftcore.testing import create

    strategy = create("heads", name)
    groups = create("param_groups", "layer_decay", decay=0.5)
    epochs = strategy_epochs(strategy, epochs=4, param_groups=groups)
    for e in epochs:
        assert e.changed <= e.trainable  # a frozen parameter never moves
        assert any(n.startswith("head.") for n in e.changed)
        assert len(set(e.lrs.values())) >= 2  # the layers learn at different rates
    if name in ("linear_probe",):
        assert all(not any(n.startswith("backbone.") for n in e.trainable) for e in epochs)
    if name == "gradual_unfreeze":
        counts = [len(e.trainable) for e in epochs]
        assert counts == sorted(counts) and counts[0] < counts[-1]


def test_strategy_epochs_uses_the_loops_group_check():
    class Greedy(HeadStrategy):
        def param_groups(self, ctx, lr, backbone_lr_mult):
            return [{"name": "head", "params": list(ctx.model.head.parameters()), "lr": lr}]

    from sftcore.errors import PluginError

    with pytest.raises(PluginError, match="left parameters out of the optimizer"):
        strategy_epochs(Greedy())


def test_sft_run_prints_one_plain_line_per_epoch_to_stderr_without_a_terminal(tmp_path):
    import yaml
    from click.testing import CliRunner

    from sftcore.cli import cli

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(epochs=2)))
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    lines = [x for x in result.stderr.splitlines() if " epoch " in x]
    assert [x.split(":")[0] for x in lines] == ["finetune epoch 1/2", "finetune epoch 2/2"]
    assert "\r" not in result.stderr  # no progress bar redraws in a log file
    assert not any(" epoch " in x for x in result.stdout.splitlines())


@pytest.mark.slow
def test_builtin_loggers_in_a_run_and_across_a_resume(tmp_path, monkeypatch):
    """csv, tensorboard and mlflow from the config: files in the run directory, the MLflow run holding the
    finished summary.json; a resumed run continues the same MLflow run and rewrites the csv exactly."""
    monkeypatch.chdir(tmp_path)
    callbacks = ["csv", "tensorboard", {"name": "mlflow", "tracking_uri": f"file:{tmp_path / 'mlruns'}"}]
    config = tiny_config(epochs=3, baseline=True) | {"callbacks": callbacks}
    sftcore.run(config, out=tmp_path / "ref")
    ref_rows = (tmp_path / "ref" / "metrics.csv").read_text().splitlines()
    assert ref_rows[0].startswith("stage,seed,epoch,") and len(ref_rows) == 1 + 3 + 3
    assert sorted(p.name for p in (tmp_path / "ref" / "tensorboard").iterdir()) == ["baseline", "finetune"]
    import json

    run_id = json.loads((tmp_path / "ref" / "mlflow-run.json").read_text())["run_id"]
    artifacts = [p.name for p in (tmp_path / "mlruns").rglob("*") if run_id in str(p) and p.is_file()]
    assert "summary.json" in artifacts and "metrics.csv" in artifacts

    original = training.Stage._save

    def crash(self, epoch, batch=0, sums=None):
        if self.name == "finetune" and epoch == 2 and not batch:
            raise Crash
        return original(self, epoch, batch, sums)

    with monkeypatch.context() as m:
        m.setattr(training.Stage, "_save", crash)
        with pytest.raises(Crash):
            sftcore.run(config, out=tmp_path / "cut")
    first_id = json.loads((tmp_path / "cut" / "mlflow-run.json").read_text())["run_id"]
    sftcore.run(resume=tmp_path / "cut")
    assert json.loads((tmp_path / "cut" / "mlflow-run.json").read_text())["run_id"] == first_id
    rows = (tmp_path / "cut" / "metrics.csv").read_text().splitlines()
    strip = lambda lines: [",".join(r.split(",")[:-1]) for r in lines]  # noqa: E731 (without seconds)
    assert strip(rows) == strip(ref_rows)


class StopThenInterrupt(Callback):
    """Asks to stop during epoch 2 (after step 1); with ``kill``, a Ctrl-C arrives at step 2 of that epoch."""

    def __init__(self, kill):
        self.kill = kill

    def on_step_end(self, stage, epoch, step, loss):
        import os
        import signal

        if stage.stage == "finetune" and epoch == 2 and step == 1:
            stage.request_stop("asked mid-epoch")
        if self.kill and stage.stage == "finetune" and epoch == 2 and step == 2:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.slow
def test_a_stop_asked_mid_epoch_then_an_interruption_resumes_exactly(tmp_path):
    from sftcore.errors import Interrupted

    config = tiny_config(epochs=4, select="last")
    ref = sftcore.run(config, out=tmp_path / "ref", callbacks=[StopThenInterrupt(kill=False)])
    assert ref["finetune"]["epochs"] == 2 and ref["finetune"]["stopped_early"] == "asked mid-epoch"
    with pytest.raises(Interrupted):
        sftcore.run(config, out=tmp_path / "cut", callbacks=[StopThenInterrupt(kill=True)])
    state = torch.load(tmp_path / "cut" / "checkpoints" / "finetune-last.pt", weights_only=True)
    assert state["batch"] == 3 and state["stopped"] == "asked mid-epoch"
    resumed = sftcore.run(resume=tmp_path / "cut", callbacks=[StopThenInterrupt(kill=False)])
    assert resumed["finetune"]["epochs"] == 2 and resumed["finetune"]["test_accuracy"] == ref["finetune"]["test_accuracy"]
    assert tiny.without_seconds(tiny.read_metrics(tmp_path / "cut")) == \
        tiny.without_seconds(tiny.read_metrics(tmp_path / "ref"))


class Unsafe(Callback):
    def __init__(self):
        self.epochs = 0

    def on_epoch_end(self, stage, record):
        self.epochs += 1

    def state_dict(self):
        return {"when": object()}  # nothing a weights_only checkpoint reloads


@pytest.mark.slow
def test_a_callback_state_a_checkpoint_cannot_hold_switches_it_off_not_the_resume(tmp_path, capsys):
    unsafe = Unsafe()
    summary = sftcore.run(tiny_config(epochs=2), out=tmp_path / "r", callbacks=[unsafe])
    assert unsafe.epochs == 1  # off after the first checkpoint
    assert "failed in state_dict" in summary["callback_errors"][0]
    state = torch.load(tmp_path / "r" / "checkpoints" / "finetune-last.pt", weights_only=True)  # still safe
    assert state["callbacks"] == {}


@pytest.mark.slow
def test_a_run_started_by_the_previous_version_resumes_without_a_config_change(tmp_path, monkeypatch):
    """The marker of a run from before callbacks and param_groups existed lacks those keys (and an
    optimizer option a plugin added since would be missing too): it is the same config."""
    import json

    from sftcore._run import ownership

    original = training.Stage._save

    def crash(self, epoch, batch=0, sums=None):
        if epoch == 1 and not batch:
            raise Crash
        return original(self, epoch, batch, sums)

    with monkeypatch.context() as m:
        m.setattr(training.Stage, "_save", crash)
        with pytest.raises(Crash):
            sftcore.run(tiny_config(epochs=2), out=tmp_path / "cut")
    marker_path = tmp_path / "cut" / ownership.MARKER
    marker = json.loads(marker_path.read_text())
    del marker["config"]["callbacks"], marker["config"]["finetune"]["param_groups"]
    del marker["config"]["finetune"]["optimizer"]["nesterov"]
    marker_path.write_text(json.dumps(marker))
    sftcore.run(resume=tmp_path / "cut")
    assert not (tmp_path / "cut" / ownership.CHANGES).exists()
