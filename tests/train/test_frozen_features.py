"""A stage that trains the head alone on a frozen, deterministic backbone computes the backbone's features once and
trains on them (sftcore/_train/loop.py, Stage._frozen_features): the same training as recomputing them every epoch,
the same order, resume and callbacks, with one backbone pass over the training split instead of one per epoch."""

from __future__ import annotations

import math

import pytest
import torch

import sftcore
import tiny
from sftcore._train import loop as training
from sftcore.api import Callback
from sftcore.testing import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


class CountTrainingPasses(Callback):
    """Counts the backbone's forward passes with autograd on (training steps), and the batches seen."""

    def __init__(self):
        self.passes, self.steps = 0, 0

    def on_stage_start(self, stage):
        if stage.stage == "finetune":
            stage.model.backbone.register_forward_hook(self._count)

    def _count(self, _module, _inputs, _output):
        self.passes += int(torch.is_grad_enabled())

    def on_step_end(self, stage, epoch, step, loss):
        self.steps += stage.stage == "finetune"


def _config(epochs: int = 3) -> dict:
    return tiny_config(epochs=epochs, head="linear_probe", augment=[], select="last")


def _head(run_dir) -> dict:
    state = torch.load(run_dir / "checkpoints" / "finetune.pt", weights_only=True)["model"]
    return {name: tensor for name, tensor in state.items() if name.startswith("head.")}


@pytest.mark.slow
def test_linear_probe_trains_on_features_computed_once_as_it_would_on_recomputed_ones(tmp_path, monkeypatch):
    cached_count = CountTrainingPasses()
    cached = sftcore.run(_config(), out=tmp_path / "cached", callbacks=[cached_count])
    assert cached_count.passes == 0 and cached_count.steps > 0  # no backbone pass in a training step
    with monkeypatch.context() as m:
        m.setattr(training.Stage, "_uncached_reason", lambda self: "")  # today's path: a pass per step
        every_count = CountTrainingPasses()
        every = sftcore.run(_config(), out=tmp_path / "every", callbacks=[every_count])
    assert every_count.passes == every_count.steps == cached_count.steps
    assert cached["finetune"]["test_accuracy"] == every["finetune"]["test_accuracy"]
    ours, theirs = tiny.read_metrics(tmp_path / "cached"), tiny.read_metrics(tmp_path / "every")
    losses = [(a[key], b[key]) for a, b in zip(ours, theirs) if a.get("stage") == "finetune"
              for key in ("train_loss", "val_loss", "val_accuracy")]  # validation on cached features too
    assert losses and all(math.isclose(a, b, rel_tol=1e-5) for a, b in losses), losses
    assert _head(tmp_path / "cached")
    for name, tensor in _head(tmp_path / "cached").items():
        torch.testing.assert_close(tensor, _head(tmp_path / "every")[name], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_lp_ft_caches_its_probe_epochs_only_and_augmentation_is_said(tmp_path):
    count = CountTrainingPasses()
    lines: list[str] = []
    sftcore.run(tiny_config(epochs=4, head={"name": "lp_ft", "probe_epochs": 2}, augment=[]),
                out=tmp_path / "lpft", callbacks=[count], echo=lines.append)
    per_epoch = count.steps // 4
    assert count.passes == 2 * per_epoch  # the two finetuning epochs pass through the backbone, the probe ones not
    assert not [line for line in lines if "computed every epoch" in line]  # nothing to say: the backbone trains
    sftcore.run(tiny_config(epochs=2, head="linear_probe", augment=["flip"]), out=tmp_path / "aug",
                echo=lines.append)
    said = [line for line in lines if "computed every epoch" in line]
    assert said == ["finetune: the backbone is frozen, but its features are computed every epoch: augmentation "
                    "changes the pixels every epoch"]


@pytest.mark.slow
def test_an_interrupted_cached_stage_resumes_exactly(tmp_path):
    from sftcore.errors import Interrupted
    from test_loop_plugins import StopThenInterrupt

    config = _config(epochs=4)
    ref = sftcore.run(config, out=tmp_path / "ref", callbacks=[StopThenInterrupt(kill=False)])
    with pytest.raises(Interrupted):
        sftcore.run(config, out=tmp_path / "cut", callbacks=[StopThenInterrupt(kill=True)])
    resumed = sftcore.run(resume=tmp_path / "cut", callbacks=[StopThenInterrupt(kill=False)])
    assert resumed["finetune"]["test_accuracy"] == ref["finetune"]["test_accuracy"]
    assert tiny.without_seconds(tiny.read_metrics(tmp_path / "cut")) == \
        tiny.without_seconds(tiny.read_metrics(tmp_path / "ref"))


def test_what_keeps_the_features_from_being_cached():
    from torch import nn

    assert training._random_in_training(nn.Dropout(0.1)) and not training._random_in_training(nn.Dropout(0.0))
    assert not training._random_in_training(nn.Dropout(0.5).eval())

    class DropPath(nn.Module):
        drop_prob = 0.1

    assert training._random_in_training(DropPath()) and not training._random_in_training(nn.Linear(2, 2))


@pytest.mark.slow
def test_a_frozen_stage_checkpoints_what_it_trained_and_resume_checks_the_rest(tmp_path):
    """A progress checkpoint leaves out the parameters no epoch of the stage has trained (they equal the stage's
    start, which a resume rebuilds) and carries their digest: a resume whose rebuilt start differs is one line."""
    from sftcore.errors import Interrupted, SftError
    from test_loop_plugins import StopThenInterrupt

    with pytest.raises(Interrupted):
        sftcore.run(tiny_config(epochs=4, head="linear_probe", augment=[], select="best"), out=tmp_path / "cut",
                    callbacks=[StopThenInterrupt(kill=True)])
    progress = tmp_path / "cut" / "checkpoints" / "finetune-last.pt"
    state = torch.load(progress, weights_only=True)
    assert state["model"] and all(k.startswith("head.") for k in state["model"])  # the backbone is left out
    assert state["frozen"]["names"] and all(n.startswith("backbone.") for n in state["frozen"]["names"])
    assert len(state["frozen"]["digest"]) == 64 and all(k.startswith("head.") for k in state["best"]["state"])
    state["frozen"]["digest"] = "0" * 64  # as if the frozen weights the run rebuilds had changed since
    torch.save(state, progress)
    with pytest.raises(SftError, match="frozen weights this checkpoint was saved against differ"):
        sftcore.run(resume=tmp_path / "cut")


class InterruptAt(Callback):
    """A Ctrl-C at step ``step`` of (1-based) epoch ``epoch`` of finetune, nothing else."""

    def __init__(self, epoch: int, step: int):
        self.epoch, self.step = epoch, step

    def on_step_end(self, stage, epoch, step, loss):
        import os
        import signal

        if stage.stage == "finetune" and (epoch, step) == (self.epoch, self.step):
            os.kill(os.getpid(), signal.SIGINT)


def test_a_resumed_best_copy_gets_back_what_its_checkpoint_left_out():
    """The best epoch's copy in a progress file lacks the parameters that had not trained yet; a resume fills them
    from the model it rebuilt (they still equal the stage's start), so later training cannot leak into it."""
    from types import SimpleNamespace

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    best = {"epoch": 1, "key": [1.0, 0.0], "state": {"1.weight": torch.ones(1, 2), "1.bias": torch.zeros(1)}}
    whole = training.Stage._whole_best(SimpleNamespace(model=model), best)
    assert set(whole["state"]) == set(model.state_dict())
    assert torch.equal(whole["state"]["0.weight"], model[0].weight) and torch.equal(whole["state"]["1.weight"],
                                                                                    torch.ones(1, 2))
    with torch.no_grad():
        model[0].weight.add_(1.0)  # later epochs train it: the copy keeps the start
    assert not torch.equal(whole["state"]["0.weight"], model[0].weight)


@pytest.mark.slow
def test_lp_ft_with_select_best_interrupted_in_its_probe_resumes_exactly(tmp_path):
    from sftcore.errors import Interrupted

    config = tiny_config(epochs=4, head={"name": "lp_ft", "probe_epochs": 2}, augment=[], select="best")
    ref = sftcore.run(config, out=tmp_path / "ref")
    with pytest.raises(Interrupted):
        sftcore.run(config, out=tmp_path / "cut", callbacks=[InterruptAt(2, 2)])
    assert torch.load(tmp_path / "cut" / "checkpoints" / "finetune-last.pt", weights_only=True)["frozen"]["names"]
    resumed = sftcore.run(resume=tmp_path / "cut")
    for key in ("test_accuracy", "selected_epoch", "test_loss"):
        assert resumed["finetune"][key] == ref["finetune"][key], key
    assert tiny.without_seconds(tiny.read_metrics(tmp_path / "cut")) == \
        tiny.without_seconds(tiny.read_metrics(tmp_path / "ref"))
