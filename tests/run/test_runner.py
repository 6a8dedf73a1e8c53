"""The pipeline end to end on tiny data: the run directory, the summary and the transfer gain,
determinism, the validation split, epoch selection, deterministic evaluation, reusing an
earlier run's weights, and heads whose shapes differ between stages (the seed document's bug).

Tiny means shapes at 16x16 with 20 train / 10 test images per class and LeNet at img_size 16:
each run takes a fraction of a second on a CPU.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import yaml

import sftcore
import tiny
from sftcore._config import resolve as cfgmod
from sftcore._analysis import report
from sftcore._train import loop as training
from sftcore.api import Augment
from sftcore.errors import ConfigError, SftError
from sftcore._plugins.manager import get_registry

STAGES = ("pretrain", "finetune", "baseline")


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """One tiny pretrain -> finetune -> baseline run, shared by the read-only checks below."""
    out = tmp_path_factory.mktemp("full") / "run"
    summary = sftcore.run(tiny.config(), out=out)
    return out, summary


def _ckpt(run_dir, name):
    return torch.load(run_dir / "checkpoints" / f"{name}.pt", map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- the run directory
@pytest.mark.slow
def test_run_directory_layout(full):
    out, summary = full
    assert (out / "config.yaml").is_file() and (out / "metrics.jsonl").is_file() and (out / "summary.json").is_file()
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == sorted([f"{s}.pt" for s in STAGES] + [f"{s}-last.pt" for s in STAGES])
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["run_dir"] == str(out)
    assert summary["name"] == "tiny" and summary["seed"] == 0
    assert summary["performance"]["device"] == "cpu"


@pytest.mark.slow
def test_config_yaml_is_the_resolved_config_and_loads(full):
    out, _ = full
    saved = yaml.safe_load((out / "config.yaml").read_text())
    expected = cfgmod.resolve(cfgmod.load(tiny.config()), get_registry())
    assert saved == expected
    assert cfgmod.resolve(cfgmod.load(out / "config.yaml"), get_registry()) == expected


@pytest.mark.slow
def test_metrics_one_line_per_epoch_per_stage(full):
    out, summary = full
    records = tiny.read_metrics(out)
    assert [(r["stage"], r["epoch"]) for r in records] == [
        ("pretrain", 1), ("finetune", 1), ("finetune", 2), ("baseline", 1), ("baseline", 2)]
    for r in records:
        assert math.isfinite(r["train_loss"]) and r["train_loss"] > 0
        assert 0.0 <= r["train_accuracy"] <= 1.0
        assert 0.0 <= r["val_accuracy"] <= 1.0  # every stage holds out a validation split here
        assert math.isfinite(r["val_loss"])
    for stage in STAGES:
        assert summary[stage]["epochs"] == sum(r["stage"] == stage for r in records)


@pytest.mark.slow
def test_summary_accuracies_and_sizes(full):
    _, summary = full
    for stage in STAGES:
        r = summary[stage]
        for key in ("test_accuracy", "val_accuracy", "train_accuracy"):
            assert 0.0 <= r[key] <= 1.0, (stage, key)
        hits = r["test_accuracy"] * r["test_examples"]
        assert hits == pytest.approx(round(hits), abs=1e-4)  # a fraction of the test examples
    # pretrain: 10 source classes x 20, 2 per class held out (val_fraction 0.1); test 10 x 10
    p = summary["pretrain"]
    assert (p["classes"], p["train_examples"], p["val_examples"], p["test_examples"]) == (10, 180, 20, 100)
    # finetune: 5 target classes x 6 labels, 1 per class held out; the whole test split
    f = summary["finetune"]
    assert (f["classes"], f["train_examples"], f["val_examples"], f["test_examples"]) == (5, 25, 5, 50)
    b = summary["baseline"]
    assert (b["classes"], b["train_examples"], b["val_examples"], b["test_examples"]) == (5, 25, 5, 50)
    assert f["head"] == "reinit" and b["head"] == "reinit" and b["regularizers"] == []


@pytest.mark.slow
def test_transfer_gain_is_finetune_minus_baseline_in_points(full):
    _, summary = full
    ft, bl = summary["finetune"]["test_accuracy"], summary["baseline"]["test_accuracy"]
    assert summary["transfer_gain"] == round(100 * (ft - bl), 3)
    assert summary["transfer_gain"] == pytest.approx(100 * (ft - bl), abs=5e-4)


@pytest.mark.slow
def test_transfer_gain_ci95_is_the_paired_interval(full):
    out, summary = full
    ft = tiny.evaluate_saved(out, "finetune")["correct"].float()
    bl = tiny.evaluate_saved(out, "baseline")["correct"].float()
    diff = ft - bl
    assert 100 * (ft.mean() - bl.mean()).item() == pytest.approx(summary["transfer_gain"], abs=1e-3)
    ci = 196.0 * diff.std().item() / math.sqrt(len(diff))
    assert summary["transfer_gain_ci95"] == pytest.approx(ci, abs=1e-3)


@pytest.mark.slow
def test_verdict_of_one_seed_rests_on_mcnemar(full):
    out, summary = full
    gain, p, verdict = summary["transfer_gain"], summary["transfer_gain_p"], summary["verdict"]
    ft = tiny.evaluate_saved(out, "finetune")["correct"].tolist()
    bl = tiny.evaluate_saved(out, "baseline")["correct"].tolist()
    assert p == pytest.approx(report.mcnemar_p(ft, bl))
    assert isinstance(verdict, str) and f"{gain:+.1f} points" in verdict
    assert "one seed: test sampling only" in verdict and f"{len(ft)} test examples" in verdict
    if p < 0.05 and gain > 0:
        assert verdict.startswith("transfer helped")
    elif p < 0.05 and gain < 0:
        assert verdict.startswith("transfer hurt")
    else:
        assert verdict.startswith("no clear difference")


@pytest.mark.slow
def test_seconds_per_stage_and_total(full):
    _, summary = full
    seconds = summary["seconds"]
    assert set(seconds) == {*STAGES, "total"}
    for stage in STAGES:
        assert summary[stage]["seconds"] == seconds[stage] >= 0
    assert seconds["total"] >= sum(seconds[s] for s in STAGES) - 0.01


@pytest.mark.slow
def test_heads_of_different_shapes_transfer(full):
    """The seed document's bug: a 10-class pretrain could not be loaded into a 5-class finetune."""
    out, summary = full
    pre, fine = _ckpt(out, "pretrain"), _ckpt(out, "finetune")
    assert pre["model"]["head.weight"].shape == (10, 84)
    assert fine["model"]["head.weight"].shape == (5, 84)
    assert pre["classes"] == tiny.SOURCE_CLASSES and fine["classes"] == tiny.TARGET_CLASSES
    assert summary["finetune"]["classes"] == 5


@pytest.mark.slow
def test_test_accuracy_is_reproduced_from_the_saved_model(full):
    """Evaluation is deterministic: the saved model scores exactly what the summary says."""
    out, summary = full
    for stage in STAGES:
        ev = tiny.evaluate_saved(out, stage)
        assert ev["accuracy"] == pytest.approx(summary[stage]["test_accuracy"], abs=1e-9), stage
        assert ev["loss"] == pytest.approx(summary[stage]["test_loss"], rel=1e-5), stage


@pytest.mark.slow
def test_same_config_and_seed_give_identical_results(full, tmp_path):
    """Rerunning the saved config.yaml reproduces accuracies and every metric (seconds aside)."""
    out, summary = full
    again = sftcore.run(out / "config.yaml", out=tmp_path / "again")
    assert tiny.accuracies(again) == tiny.accuracies(summary)
    assert again["transfer_gain"] == summary["transfer_gain"]
    assert tiny.without_seconds(tiny.read_metrics(tmp_path / "again")) == tiny.without_seconds(tiny.read_metrics(out))


@pytest.mark.slow
def test_same_dict_twice_is_identical_and_a_new_seed_differs(tmp_path):
    cfg = tiny.config(pretrain=False)
    cfg["finetune"]["dataset"] = tiny.shapes("target", labels_per_class=10)
    a = sftcore.run(cfg, out=tmp_path / "a")
    b = sftcore.run(cfg, out=tmp_path / "b")
    assert tiny.accuracies(a) == tiny.accuracies(b)
    assert tiny.without_seconds(tiny.read_metrics(tmp_path / "a")) == tiny.without_seconds(
        tiny.read_metrics(tmp_path / "b"))
    sftcore.run({**cfg, "seed": 1}, out=tmp_path / "c")
    assert tiny.without_seconds(tiny.read_metrics(tmp_path / "c")) != tiny.without_seconds(
        tiny.read_metrics(tmp_path / "a"))


# --------------------------------------------------------------------------- few-label subset and validation split
def _resolved(cfg):
    return cfgmod.resolve(cfg, get_registry())


def _rows(images: torch.Tensor) -> set[bytes]:
    return {bytes(img.flatten().tolist()) for img in images}


def test_seed_picks_the_few_label_subset():
    cfg = _resolved(tiny.config(pretrain=False, baseline=False))
    _, _, a = tiny.stage_data(cfg, "finetune", seed=0)
    _, _, a2 = tiny.stage_data(cfg, "finetune", seed=0)
    _, _, b = tiny.stage_data(cfg, "finetune", seed=1)
    assert torch.equal(a.train.images, a2.train.images) and torch.equal(a.val.images, a2.val.images)
    assert _rows(a.train.images) | _rows(a.val.images) != _rows(b.train.images) | _rows(b.val.images)
    assert torch.equal(a.test.images, b.test.images)  # the test split never depends on the run seed
    for data in (a, b):  # stratified: every class keeps labels_per_class examples (5 train + 1 val)
        assert torch.bincount(data.train.labels, minlength=5).tolist() == [5] * 5
        assert torch.bincount(data.val.labels, minlength=5).tolist() == [1] * 5


@pytest.mark.parametrize("subset, per_class, val_per_class", [
    ({"labels_per_class": 6}, 6, 2),
    ({"fraction": 0.5}, 10, 3),
    ({}, 20, 7),
])
def test_validation_is_held_out_of_the_few_label_training_data(subset, per_class, val_per_class):
    cfg = _resolved(tiny.config(pretrain=False, baseline=False,
                                finetune={"dataset": tiny.shapes("target", val_fraction=0.34, **subset)}))
    pipe, backbone, data = tiny.stage_data(cfg, "finetune")
    from sftcore.api import DatasetContext
    from sftcore._config.resolve import DATASET_RUNNER_KEYS
    from sftcore._plugins.manager import get_registry

    ds = {k: v for k, v in cfg["finetune"]["dataset"].items() if k != "name" and k not in DATASET_RUNNER_KEYS}
    full_train = get_registry().get("datasets", "shapes").create(
        DatasetContext(seed=cfg["seed"], input_size=backbone.input_size, stage="finetune"), **ds).train
    train, val, test = _rows(data.train.images), _rows(data.val.images), _rows(data.test.images)
    assert len(train) == len(data.train) and len(val) == len(data.val)  # distinct images
    assert not train & val
    assert (train | val) <= _rows(full_train.images)  # all from the training split...
    assert not (train | val) & test  # ...none from the test split
    assert len(data.test) == 50
    assert torch.bincount(data.val.labels, minlength=5).tolist() == [val_per_class] * 5
    assert torch.bincount(data.train.labels, minlength=5).tolist() == [per_class - val_per_class] * 5


@pytest.mark.slow
@pytest.mark.parametrize("subset, train_n, val_n", [({"labels_per_class": 4}, 15, 5), ({"fraction": 0.25}, 20, 5)])
def test_split_sizes_in_the_summary(tmp_path, subset, train_n, val_n):
    cfg = tiny.config(pretrain=False, baseline=False)
    cfg["finetune"].update(epochs=1, dataset=tiny.shapes("target", **subset))
    s = sftcore.run(cfg, out=tmp_path / "r")["finetune"]
    assert (s["train_examples"], s["val_examples"], s["test_examples"]) == (train_n, val_n, 50)


@pytest.mark.slow
def test_val_fraction_zero_means_no_validation_and_best_falls_back_to_last(tmp_path):
    cfg = tiny.config(pretrain=False, baseline=False)
    cfg["finetune"].update(epochs=2, select="best", dataset=tiny.shapes("target", labels_per_class=6, val_fraction=0))
    s = sftcore.run(cfg, out=tmp_path / "r")["finetune"]
    assert (s["train_examples"], s["val_examples"]) == (30, 0)
    assert s["selected_epoch"] == 2 and s["val_accuracy"] is None
    records = tiny.read_metrics(tmp_path / "r")
    assert len(records) == 2 and all("val_accuracy" not in r for r in records)
    # the saved model is the last epoch's
    last = _ckpt(tmp_path / "r", "finetune-last")["model"]
    final = _ckpt(tmp_path / "r", "finetune")["model"]
    assert all(torch.equal(final[k], last[k]) for k in final)


# --------------------------------------------------------------------------- epoch selection
def _select_cfg(select="best", epochs=4):
    cfg = tiny.config(pretrain=False, baseline=False)
    cfg["finetune"].update(epochs=epochs, select=select, schedule="none", optimizer={"name": "sgd", "lr": 0.05},
                           dataset=tiny.shapes("target", labels_per_class=10, val_fraction=0.3))
    return cfg


@pytest.mark.slow
def test_select_best_agrees_with_metrics_and_restores_that_model(tmp_path):
    s = sftcore.run(_select_cfg(), out=tmp_path / "r")["finetune"]
    records = tiny.read_metrics(tmp_path / "r")
    selected = tiny.expected_selection(records)
    assert s["selected_epoch"] == selected
    assert s["val_accuracy"] == records[selected - 1]["val_accuracy"]
    # the saved (and tested) model is the selected epoch's: it scores that epoch's val accuracy again
    ev = tiny.evaluate_saved(tmp_path / "r", "finetune", "val")
    assert ev["accuracy"] == pytest.approx(records[selected - 1]["val_accuracy"], abs=1e-9)
    assert ev["loss"] == pytest.approx(records[selected - 1]["val_loss"], rel=1e-5)


@pytest.mark.slow
def test_select_best_restores_the_best_epoch_ties_to_lower_val_loss(tmp_path, monkeypatch):
    """Scripted validation scores: epochs 2 and 3 tie on accuracy, 3 has the lower loss; 4 is worse."""
    scripted = iter([(0.4, 1.0), (0.8, 0.9), (0.8, 0.7), (0.6, 0.1)])
    states = []
    real = training.evaluate

    def fake_evaluate(model, batches, transform, perf):
        ev = real(model, batches, transform, perf)
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        ev["accuracy"], ev["loss"] = next(scripted)
        return ev

    monkeypatch.setattr(training, "evaluate", fake_evaluate)  # the stage's validation, not the runner's test
    s = sftcore.run(_select_cfg(), out=tmp_path / "r")["finetune"]
    assert len(states) == 4
    assert s["selected_epoch"] == 3 and s["val_accuracy"] == 0.8
    assert [r["val_accuracy"] for r in tiny.read_metrics(tmp_path / "r")] == [0.4, 0.8, 0.8, 0.6]
    final = _ckpt(tmp_path / "r", "finetune")["model"]
    assert all(torch.equal(final[k], states[2][k]) for k in final)
    assert not all(torch.equal(final[k], states[3][k]) for k in final)
    last = _ckpt(tmp_path / "r", "finetune-last")["model"]
    assert all(torch.equal(last[k], states[3][k]) for k in last)


@pytest.mark.slow
def test_select_last_keeps_the_last_epoch(tmp_path, monkeypatch):
    scripted = iter([(0.9, 0.1), (0.1, 5.0)])
    real = training.evaluate

    def fake_evaluate(*args):
        ev = real(*args)
        ev["accuracy"], ev["loss"] = next(scripted)
        return ev

    monkeypatch.setattr(training, "evaluate", fake_evaluate)
    s = sftcore.run(_select_cfg("last", epochs=2), out=tmp_path / "r")["finetune"]
    assert s["selected_epoch"] == 2 and s["val_accuracy"] == 0.1
    last, final = _ckpt(tmp_path / "r", "finetune-last")["model"], _ckpt(tmp_path / "r", "finetune")["model"]
    assert all(torch.equal(final[k], last[k]) for k in final)


# --------------------------------------------------------------------------- evaluation
def test_evaluate_is_deterministic_and_does_not_augment():
    from torch import nn

    from sftcore._data.batches import Batches
    from sftcore._train.model import TransferModel

    cfg = _resolved(tiny.config(pretrain=False, baseline=False))
    pipe, backbone, data = tiny.stage_data(cfg, "finetune")
    assert data.augment != Augment()  # shapes asks for crop + flip when training...
    train_tf, eval_tf = pipe.transforms(data, backbone)
    assert [type(a).__name__ for a in train_tf.on_uint8 + train_tf.on_float] == ["Crop", "Flip"]
    assert eval_tf.on_uint8 == [] and eval_tf.on_float == []  # ...and evaluation gets none
    torch.manual_seed(0)
    model = TransferModel(backbone, nn.Linear(backbone.num_features, 5))
    model.train()
    batches = Batches(data.test, 16, pipe.perf.device, shuffle=False)
    first = training.evaluate(model, batches, eval_tf, pipe.perf)
    second = training.evaluate(model, batches, eval_tf, pipe.perf)
    assert model.training  # evaluate puts the model back the way it was
    assert first["accuracy"] == second["accuracy"] and first["loss"] == second["loss"]
    assert torch.equal(first["correct"], second["correct"]) and len(first["correct"]) == 50
    # even the training transform does not augment without a generator
    assert training.evaluate(model, batches, train_tf, pipe.perf)["accuracy"] == first["accuracy"]


# --------------------------------------------------------------------------- options of the run
@pytest.mark.slow
def test_checkpoints_false_writes_none(tmp_path):
    sftcore.run(tiny.config(checkpoints=False), out=tmp_path / "r")
    assert not (tmp_path / "r" / "checkpoints").exists()
    assert (tmp_path / "r" / "summary.json").is_file() and (tmp_path / "r" / "metrics.jsonl").is_file()


@pytest.mark.slow
def test_no_baseline_means_no_gain(tmp_path):
    s = sftcore.run(tiny.config(baseline=False), out=tmp_path / "r")
    assert "baseline" not in s
    assert s["transfer_gain"] is None and s["transfer_gain_ci95"] is None and s["verdict"] is None
    assert set(s["seconds"]) == {"pretrain", "finetune", "total"}


@pytest.mark.slow
def test_pretrain_only(tmp_path):
    s = sftcore.run(tiny.config(finetune=False), out=tmp_path / "r")
    assert "finetune" not in s and 0 <= s["pretrain"]["test_accuracy"] <= 1
    assert s["transfer_gain"] is None


@pytest.mark.slow
def test_default_out_is_runs_name_timestamp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tiny.config(pretrain=False, baseline=False, checkpoints=False, name="mine")
    cfg["finetune"]["epochs"] = 1
    first = sftcore.run(cfg)["run_dir"]
    second = sftcore.run(cfg)["run_dir"]
    for run_dir in (first, second):
        assert re.fullmatch(r"runs/mine-\d{8}-\d{6}(-\d+)?", run_dir.replace("\\", "/")), run_dir
        assert (tmp_path / run_dir / "summary.json").is_file()
    assert first != second


@pytest.mark.slow
def test_out_holding_a_run_is_refused(full):
    out, _ = full
    before = (out / "summary.json").read_text()
    with pytest.raises(ConfigError) as info:
        sftcore.run(tiny.config(), out=out)
    assert "already holds a run" in str(info.value) and str(out) in str(info.value)
    assert "\n" not in str(info.value)
    assert (out / "summary.json").read_text() == before


@pytest.mark.slow
def test_out_may_be_an_existing_empty_directory(tmp_path):
    (tmp_path / "r").mkdir()
    cfg = tiny.config(pretrain=False, baseline=False, checkpoints=False)
    cfg["finetune"]["epochs"] = 1
    sftcore.run(cfg, out=tmp_path / "r")
    assert (tmp_path / "r" / "summary.json").is_file()


@pytest.mark.slow
def test_run_from_yaml_path_with_overrides(tmp_path):
    path = tiny.write_yaml(tmp_path / "c.yaml", tiny.config(pretrain=False))
    s = sftcore.run(path, out=tmp_path / "r", overrides=["finetune.epochs=1", "name=from-yaml"])
    assert s["name"] == "from-yaml" and s["finetune"]["epochs"] == 1 and s["baseline"]["epochs"] == 2
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["finetune"]["epochs"] == 1


@pytest.mark.slow
def test_default_config_runs_with_overrides(tmp_path):
    """`sftcore.run(None)` is the shapes demo; shrunk with overrides it runs all three stages."""
    s = sftcore.run(None, out=tmp_path / "r", overrides=[
        "device=cpu", "pretrain.epochs=1", "finetune.epochs=1",
        "pretrain.dataset.train_per_class=20", "pretrain.dataset.test_per_class=5",
        "finetune.dataset.train_per_class=20", "finetune.dataset.test_per_class=5", "baseline.epochs=1"])
    assert s["name"] == "shapes-demo"
    assert s["finetune"]["head"] == "lp_ft" and s["finetune"]["regularizers"] == ["l2_sp"]
    assert s["finetune"]["train_examples"] + s["finetune"]["val_examples"] == 50  # 10 labels x 5 classes
    assert s["transfer_gain"] == round(100 * (s["finetune"]["test_accuracy"] - s["baseline"]["test_accuracy"]), 3)


@pytest.mark.slow
def test_config_errors_come_before_any_run_directory(tmp_path):
    with pytest.raises(ConfigError, match="finetune.epochs must be an integer"):
        sftcore.run(tiny.config(), out=tmp_path / "r", overrides=["finetune.epochs=ten"])
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        sftcore.run(tiny.config(device="cuda"), out=tmp_path / "r")
    message = str(info.value)
    assert "cuda" in message and "device" in message and "\n" not in message
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_error_leaves_no_run_directory(tmp_path):
    with pytest.raises(ConfigError):
        sftcore.run(tiny.config(device="cuda"), out=tmp_path / "r")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_one_label_per_class_leaves_nothing_to_validate_on(tmp_path):
    cfg = tiny.config(pretrain=False, baseline=False,
                      finetune={"dataset": tiny.shapes("target", labels_per_class=1), "batch_size": 5})
    s = sftcore.run(cfg, out=tmp_path / "r")["finetune"]
    assert (s["train_examples"], s["val_examples"]) == (5, 0)
    assert s["selected_epoch"] == 2 and s["val_accuracy"] is None


@pytest.mark.slow
def test_epochs_zero_trains_nothing(tmp_path):
    cfg = tiny.config(pretrain=False, baseline=False)
    cfg["finetune"].update(epochs=0, head="imprint")
    s = sftcore.run(cfg, out=tmp_path / "r")["finetune"]
    assert s["epochs"] == 0 and s["selected_epoch"] == 0
    metrics = tmp_path / "r" / "metrics.jsonl"
    assert not metrics.exists() or tiny.read_metrics(tmp_path / "r") == []
    assert 0 <= s["test_accuracy"] <= 1


@pytest.mark.slow
def test_metrics_jsonl_exists_even_when_no_epoch_ran(tmp_path):
    sftcore.run(tiny.config(pretrain=False, baseline=False, finetune={"epochs": 0, "head": "imprint"}),
                out=tmp_path / "r")
    assert (tmp_path / "r" / "metrics.jsonl").is_file()


# --------------------------------------------------------------------------- reusing an earlier run
@pytest.mark.slow
def test_reuse_weights_with_match_classes_copies_rows_by_name(full, plugin, tmp_path):
    out, _ = full
    plugin(tiny.dataset_plugin(t_named=tiny.named_dataset), "t-tiny-named")
    targets = ["square filled", "novel thing", "Circle_Filled"]  # names normalise: case, _ and spaces
    cfg = {"name": "reuse", "device": "cpu",
           "backbone": {"name": "lenet", "img_size": 16, "weights": str(out / "checkpoints" / "pretrain.pt")},
           "finetune": {"dataset": {"name": "t_named", "classes": targets}, "epochs": 0,
                        "head": "match_classes"}}
    s = sftcore.run(cfg, out=tmp_path / "r")
    assert "pretrain" not in s and s["finetune"]["classes"] == 3
    pre = _ckpt(out, "pretrain")["model"]
    fine = _ckpt(tmp_path / "r", "finetune")["model"]
    src = tiny.SOURCE_CLASSES
    assert fine["head.weight"].shape == (3, 84)
    assert torch.equal(fine["head.weight"][0], pre["head.weight"][src.index("square filled")])
    assert torch.equal(fine["head.bias"][0], pre["head.bias"][src.index("square filled")])
    assert torch.equal(fine["head.weight"][2], pre["head.weight"][src.index("circle filled")])
    assert torch.equal(fine["head.bias"][2], pre["head.bias"][src.index("circle filled")])
    assert not any(torch.equal(fine["head.weight"][1], row) for row in pre["head.weight"])  # new class: new row
    backbone = {k: v for k, v in pre.items() if k.startswith("backbone.")}
    assert all(torch.equal(fine[k], v) for k, v in backbone.items())  # the backbone came from the file


@pytest.mark.slow
def test_reuse_weights_on_the_source_task_reproduces_the_pretrain_model(full, tmp_path):
    """Same dataset as source and target: every head row is copied, so with 0 epochs the finetune
    model is the pretrain model and scores exactly the same on the same test split."""
    out, summary = full
    cfg = {"name": "reuse", "device": "cpu",
           "backbone": {"name": "lenet", "img_size": 16, "weights": str(out / "checkpoints" / "pretrain.pt")},
           "finetune": {"dataset": tiny.shapes("source"), "epochs": 0, "head": {"name": "match_classes"}}}
    s = sftcore.run(cfg, out=tmp_path / "r")
    pre, fine = _ckpt(out, "pretrain")["model"], _ckpt(tmp_path / "r", "finetune")["model"]
    assert pre.keys() == fine.keys() and all(torch.equal(pre[k], fine[k]) for k in pre)
    assert s["finetune"]["test_accuracy"] == summary["pretrain"]["test_accuracy"]


@pytest.mark.slow
def test_reuse_weights_then_train_with_a_baseline(full, tmp_path):
    out, _ = full
    cfg = tiny.config(pretrain=False, backbone={"weights": str(out / "checkpoints" / "pretrain.pt")})
    cfg["finetune"]["head"] = "match_classes"  # no target name matches a source name: all rows new
    s = sftcore.run(cfg, out=tmp_path / "r")
    assert s["finetune"]["classes"] == 5 and s["baseline"]["classes"] == 5
    assert s["transfer_gain"] == round(100 * (s["finetune"]["test_accuracy"] - s["baseline"]["test_accuracy"]), 3)
    pre = _ckpt(out, "pretrain")["model"]
    base = _ckpt(tmp_path / "r", "baseline")["model"]
    assert not torch.equal(base["backbone.stage1.0.weight"], pre["backbone.stage1.0.weight"])  # scratch is scratch


@pytest.mark.slow
def test_match_classes_without_a_source_head_is_a_clear_error(tmp_path):
    cfg = tiny.config(pretrain=False, baseline=False)
    cfg["finetune"]["head"] = "match_classes"
    with pytest.raises(ConfigError, match="match_classes needs a source head") as info:
        sftcore.run(cfg, out=tmp_path / "r")
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_missing_weights_file_is_a_clear_error(tmp_path):
    cfg = tiny.config(pretrain=False, backbone={"weights": str(tmp_path / "nope.pt")})
    with pytest.raises(SftError, match="nope.pt") as info:
        sftcore.run(cfg, out=tmp_path / "r")
    assert "\n" not in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize("head", ["reinit", "match_classes", "linear_probe"])
def test_ten_classes_into_a_hundred(plugin, tmp_path, head):
    plugin(tiny.dataset_plugin(t_named=tiny.named_dataset), "t-tiny-named")
    cfg = tiny.config(baseline=False)
    cfg["finetune"] = {"dataset": {"name": "t_named", "classes": [f"c{i}" for i in range(100)],
                                   "train_per_class": 2, "test_per_class": 1},
                       "epochs": 1, "batch_size": 64, "head": head}
    s = sftcore.run(cfg, out=tmp_path / "r")
    assert s["pretrain"]["classes"] == 10 and s["finetune"]["classes"] == 100
    assert (s["finetune"]["train_examples"], s["finetune"]["val_examples"], s["finetune"]["test_examples"]) == (
        100, 100, 100)
    assert _ckpt(tmp_path / "r", "finetune")["model"]["head.weight"].shape == (100, 84)
    assert 0 <= s["finetune"]["test_accuracy"] <= 1


# --------------------------------------------------------------------------- data checks at the plugin boundary
def _splits_plugin(make):
    def factory(ctx, kind: str = "ok"):
        """Deliberately broken splits (t_bad, for tests)."""
        return make(kind)
    return tiny.dataset_plugin(t_bad=factory)


@pytest.mark.slow
def test_dataset_splits_are_checked_at_the_plugin_boundary(tmp_path, plugin):
    from sftcore.api import DataSplits, ImageSet
    from sftcore.errors import PluginError

    def make(kind):
        images = torch.zeros(4, 3, 16, 16, dtype=torch.uint8)
        labels = torch.tensor([0, 1, 0, 1])
        test = ImageSet(torch.zeros(2, 3, 20, 20, dtype=torch.uint8), torch.tensor([0, 1]))
        if kind == "float_labels":
            return DataSplits(["a", "b"], ImageSet(images, labels.float()))
        return DataSplits(["a", "b"], ImageSet(images, labels), test=test)

    plugin(_splits_plugin(make), "t-bad")
    cfg = tiny.config(pretrain=False, baseline=False)
    cfg["finetune"]["dataset"] = {"name": "t_bad", "kind": "float_labels"}
    with pytest.raises(PluginError, match="train.labels must be int64"):
        sftcore.run(cfg, out=tmp_path / "a")
    cfg["finetune"]["dataset"] = {"name": "t_bad", "kind": "shapes_differ"}
    with pytest.raises(PluginError, match=r"test images are \(3, 20, 20\), train images \(3, 16, 16\)"):
        sftcore.run(cfg, out=tmp_path / "b")


@pytest.mark.slow
def test_a_channel_count_that_cannot_be_converted_is_a_config_error(tmp_path):
    from sftcore.errors import ConfigError

    cfg = tiny.config(pretrain=False, baseline=False)
    cfg["backbone"] = {"name": "timm", "model": "resnet10t", "in_chans": 4}
    with pytest.raises(ConfigError, match="3-channel images but the backbone takes 4 channels"):
        sftcore.run(cfg, out=tmp_path / "r")


@pytest.mark.slow
def test_each_stage_says_the_size_of_its_images_and_the_size_the_model_sees(tmp_path):
    """Issue 27: a folder of small images trained at a backbone's larger fixed input costs far more compute; a run
    says both sizes once per stage and records them in summary.json (image_shape, input_shape)."""
    lines: list[str] = []
    cfg = tiny.config(pretrain=False, baseline=False, backbone={"name": "lenet", "img_size": 24})
    summary = sftcore.run(cfg, out=tmp_path / "r", echo=lines.append)
    assert summary["finetune"]["image_shape"] == [3, 16, 16] and summary["finetune"]["input_shape"] == [3, 24, 24]
    said = [line for line in lines if line.startswith("finetune: images")]
    assert said == ["finetune: images 3x16x16, the model sees 3x24x24 (resized to the backbone's fixed input "
                    "size on the fly)"]
