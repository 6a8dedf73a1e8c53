"""Several seeds in one run, epochs: auto, select: auto, and what a run records about its environment."""

from __future__ import annotations

import json
import math

import pytest
import torch

import sftcore
import sftcore._config.resolve
from sftcore._config.schema import StageConfig
import tiny
from sftcore._analysis import report
from sftcore._train import loop as training
from sftcore.api import ImageSet
from sftcore.cli import main
from sftcore._run.pipeline import Pipeline


def two_seeds(**top):
    return tiny.config(seeds=2, **top)


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    out = tmp_path_factory.mktemp("multi") / "run"
    return out, sftcore.run(two_seeds(), out=out)


@pytest.mark.slow
def test_each_seed_trains_its_own_finetune_and_baseline(multi):
    out, summary = multi
    assert summary["seeds"] == [0, 1] and [r["seed"] for r in summary["per_seed"]] == [0, 1]
    ckpt, preds = out / "checkpoints", out / "predictions"
    for stage in ("finetune", "baseline"):  # the first seed keeps the plain names
        assert (ckpt / f"{stage}.pt").is_file() and (ckpt / f"{stage}-seed1.pt").is_file()
        assert (preds / f"{stage}.json").is_file() and (preds / f"{stage}-seed1.json").is_file()
    assert (ckpt / "pretrain.pt").is_file() and not (ckpt / "pretrain-seed1.pt").exists()  # pretrained once
    tags = {(r["stage"], r["seed"]) for r in tiny.read_metrics(out)}
    assert tags == {("pretrain", 0), ("finetune", 0), ("baseline", 0), ("finetune-seed1", 1), ("baseline-seed1", 1)}
    saved = torch.load(ckpt / "finetune-seed1.pt", weights_only=True)
    assert saved["seed"] == 1 and saved["stage"] == "finetune" and saved["tag"] == "finetune-seed1"


@pytest.mark.slow
def test_stage_results_are_means_over_seeds_and_the_gain_is_paired(multi):
    _, summary = multi
    runs = summary["per_seed"]
    for stage in ("finetune", "baseline"):
        accs = [r[stage]["test_accuracy"] for r in runs]
        assert summary[stage]["test_accuracy"] == pytest.approx(sum(accs) / 2)
        assert summary[stage]["test_accuracy_sd"] == pytest.approx(abs(accs[0] - accs[1]) / math.sqrt(2))
        assert summary[stage]["seeds"] == 2
        assert summary["seconds"][stage] == pytest.approx(sum(r[stage]["seconds"] for r in runs), abs=2e-3)
    gains = [100 * (r["finetune"]["test_accuracy"] - r["baseline"]["test_accuracy"]) for r in runs]
    assert [r["transfer_gain"] for r in runs] == pytest.approx(gains, abs=1e-3)
    assert summary["transfer_gain"] == pytest.approx(sum(gains) / 2, abs=1e-3)
    sd = abs(gains[0] - gains[1]) / math.sqrt(2)
    assert summary["transfer_gain_sd"] == pytest.approx(sd, abs=1e-3)
    assert summary["transfer_gain_ci95"] == pytest.approx(report.t975(1) * sd / math.sqrt(2), abs=1e-3)
    assert "mean of 2 seeds" in summary["verdict"]
    assert "pretrain" not in runs[0] and summary["pretrain"]["test_accuracy"] is not None


@pytest.mark.slow
def test_seeds_differ_in_their_subset_and_the_first_seed_matches_a_one_seed_run(multi, tmp_path):
    _, summary = multi
    single = sftcore.run(tiny.config(), out=tmp_path / "one")
    first = summary["per_seed"][0]
    for stage in ("finetune", "baseline"):
        assert first[stage]["test_accuracy"] == single[stage]["test_accuracy"]
        assert first[stage]["train_loss"] == single[stage]["train_loss"]
    subsets = [tiny.stage_data(sftcore._config.resolve.resolve(two_seeds(), None), "finetune", seed)[2].train.images
               for seed in (0, 1)]
    assert subsets[0].shape == subsets[1].shape and not torch.equal(subsets[0], subsets[1])
    assert single["seeds"] == [0] and len(single["per_seed"]) == 1


@pytest.mark.slow
def test_pretrain_per_seed_pretrains_again(tmp_path):
    summary = sftcore.run(two_seeds(pretrain_per_seed=True, baseline=False), out=tmp_path / "r")
    assert (tmp_path / "r" / "checkpoints" / "pretrain-seed1.pt").is_file()
    assert [r["pretrain"]["seed"] for r in summary["per_seed"]] == [0, 1]
    assert summary["pretrain"]["seeds"] == 2
    w0 = torch.load(tmp_path / "r" / "checkpoints" / "pretrain.pt", weights_only=True)["model"]
    w1 = torch.load(tmp_path / "r" / "checkpoints" / "pretrain-seed1.pt", weights_only=True)["model"]
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)  # another init and order


@pytest.mark.slow
def test_resume_continues_a_multi_seed_run_exactly(tmp_path, monkeypatch):
    cfg = two_seeds(baseline={"name": "scratch", "max_epochs": 6, "patience": 2})
    reference = sftcore.run(cfg, out=tmp_path / "ref")
    original = training.Stage.run

    def crash(self):
        if self.name == "finetune-seed1":
            raise KeyboardInterrupt
        return original(self)

    with monkeypatch.context() as m:
        m.setattr(training.Stage, "run", crash)
        with pytest.raises(sftcore.errors.Interrupted):
            sftcore.run(cfg, out=tmp_path / "cut")
    assert (tmp_path / "cut" / "checkpoints" / "baseline.pt").exists()
    assert not (tmp_path / "cut" / "checkpoints" / "finetune-seed1.pt").exists()
    resumed = sftcore.run(resume=tmp_path / "cut")
    for ref, res in zip(reference["per_seed"], resumed["per_seed"]):
        for stage in ("finetune", "baseline"):
            assert res[stage]["test_accuracy"] == ref[stage]["test_accuracy"]
            assert res[stage]["epochs"] == ref[stage]["epochs"]
    assert resumed["transfer_gain"] == reference["transfer_gain"]
    assert tiny.without_seconds(tiny.read_metrics(tmp_path / "cut")) == \
        tiny.without_seconds(tiny.read_metrics(tmp_path / "ref"))


def test_cli_seeds_option(tmp_path, capsys):
    cfg = tiny.write_yaml(tmp_path / "c.yaml", tiny.config(pretrain=False))
    with pytest.raises(SystemExit) as info:
        main(["run", str(cfg), "--seeds", "2", "--out", str(tmp_path / "r"), "--no-progress"])
    assert not info.value.code
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["seeds"] == [0, 1]
    assert "mean ± sd over seeds 0, 1" in out and "mean of 2 seeds" in out


@pytest.mark.slow
def test_a_list_of_seeds(tmp_path):
    summary = sftcore.run(tiny.config(pretrain=False, baseline=False, seeds=[5, 9]), out=tmp_path / "r")
    assert summary["seeds"] == [5, 9] and [r["seed"] for r in summary["per_seed"]] == [5, 9]
    assert (tmp_path / "r" / "checkpoints" / "finetune-seed9.pt").is_file()
    assert summary["verdict"] is None and "transfer_gain" in summary


# --------------------------------------------------------------------------- epochs: auto
def _history(losses, acc=1.0):
    return [{"epoch": i + 1, "train_loss": loss, "train_accuracy": acc} for i, loss in enumerate(losses)]


def test_auto_epochs_drops_the_lr_on_each_plateau_then_stops():
    auto = training.auto_epochs
    assert auto(_history([1.0, 0.9, 0.8]), 3) == (0, False)  # fewer epochs than patience + 1
    assert auto(_history([1.0, 0.8, 0.6, 0.4]), 3) == (0, False)  # still improving
    assert auto(_history([1.0, 0.5, 0.5, 0.499, 0.5]), 3) == (1, False)  # < 1% better for 3 epochs: drop
    # after a drop the plateau is judged afresh: it needs patience + 1 epochs of its own
    assert auto(_history([1.0, 0.5, 0.5, 0.5, 0.5, 0.3, 0.3, 0.3]), 3) == (1, False)
    assert auto(_history([1.0, 0.5, 0.5, 0.5, 0.5, 0.3, 0.3, 0.3, 0.3]), 3) == (2, False)
    flat = [1.0, 0.5, 0.5, 0.5, 0.5] + [0.4] * 4 + [0.3] * 4
    assert auto(_history(flat), 3) == (2, True)  # a plateau at the lowest rate: converged
    assert auto(_history(flat, acc=0.8), 3) == (0, False)  # not fitted yet: no drop, no stop
    stuck = _history([1.6] * 12, acc=0.2) + _history([1.0, 0.5, 0.5, 0.5, 0.5])
    assert auto(stuck, 3) == (1, False)  # the flat start at chance did not lower the rate
    tiny_loss = [0.5, 0.0009, 0.0005, 0.0002, 0.0001]  # below 0.001 nothing counts as improving
    assert auto(_history(tiny_loss), 3) == (1, False)


def test_fixed_epochs_never_stop_early():
    stage = training.Stage.__new__(training.Stage)
    stage.cfg = StageConfig.of({"epochs": 5, "patience": 3})
    stage.history = _history([1.0, 0.5, 0.5, 0.5, 0.5])
    assert not stage.converged()


@pytest.mark.slow
def test_auto_baseline_trains_until_converged_and_records_it(tmp_path):
    cfg = tiny.config(pretrain=False, baseline={"name": "scratch", "max_epochs": 60, "patience": 3},
                      finetune={"optimizer": {"name": "adamw", "lr": 0.003}})
    summary = sftcore.run(cfg, out=tmp_path / "r")
    base = summary["baseline"]
    assert base["epochs_auto"] is True and summary["finetune"]["epochs_auto"] is False
    records = [r for r in tiny.read_metrics(tmp_path / "r") if r["stage"] == "baseline"]
    assert len(records) == base["epochs"] and 3 < base["epochs"] <= 60
    if base["epochs"] < 60:  # stopped early: because it converged, at the lowest learning rate
        assert base["train_accuracy"] >= 0.9
        assert training.auto_epochs(records, 3) == (2, True)
        drops = [i for i in range(1, len(records)) if records[i]["lr"] < 0.5 * records[i - 1]["lr"]]
        assert len(drops) == 2  # two tenfold drops, each visible in the next epoch's lr


@pytest.mark.slow
def test_auto_stops_at_the_cap(tmp_path):
    cfg = tiny.config(pretrain=False, baseline={"name": "scratch", "max_epochs": 3, "patience": 50})
    summary = sftcore.run(cfg, out=tmp_path / "r")
    assert summary["baseline"]["epochs"] == 3
    records = [r for r in tiny.read_metrics(tmp_path / "r") if r["stage"] == "baseline"]
    assert records[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # the cosine reached its end at the cap


# --------------------------------------------------------------------------- select: auto
@pytest.mark.slow
def test_select_auto_keeps_the_last_epoch_on_a_small_validation_set(tmp_path):
    summary = sftcore.run(tiny.config(pretrain=False, baseline=False, finetune={"epochs": 4}), out=tmp_path / "r")
    ft = summary["finetune"]
    assert ft["val_examples"] < 50 and ft["select"] == "last" and ft["selected_epoch"] == 4


@pytest.mark.slow
def test_select_auto_picks_the_best_epoch_on_a_large_validation_set(tmp_path):
    data = tiny.shapes("target", train_per_class=40, labels_per_class=None)
    summary = sftcore.run(tiny.config(pretrain=False, baseline=False,
                                      finetune={"epochs": 4, "dataset": {**data, "val_fraction": 0.3}}),
                          out=tmp_path / "r")
    ft = summary["finetune"]
    assert ft["val_examples"] >= 50 and ft["select"] == "best"
    assert ft["selected_epoch"] == tiny.expected_selection(
        [r for r in tiny.read_metrics(tmp_path / "r") if r["stage"] == "finetune"])


# --------------------------------------------------------------------------- what the run records
@pytest.mark.slow
def test_summary_records_the_environment(multi):
    _, summary = multi
    env = summary["environment"]
    assert env["torch_threads"] == torch.get_num_threads() and env["torch"] == torch.__version__
    assert env["sftcore"] == sftcore.__version__ and env["device"] == "cpu" and env["timm"]


@pytest.mark.slow
def test_random_start_is_warned_only_without_pretraining(multi, tmp_path):
    _, summary = multi
    assert not any("measures nothing" in w for w in summary["verdict_warnings"])
    summary = sftcore.run(tiny.config(pretrain=False), out=tmp_path / "r")
    assert any("measures nothing" in w for w in summary["verdict_warnings"])
    assert "measures nothing" in summary["verdict"]


def test_train_batches_are_shuffled_the_same_way_at_every_call():
    cfg = sftcore._config.resolve.resolve(tiny.config(pretrain=False, baseline=False), None)
    pipe = Pipeline(cfg, None, False, None)
    labels = torch.arange(4).repeat_interleave(8)  # stored class by class, as image folders are
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 4, 4).contiguous()
    batches = pipe._train_batches(ImageSet(images, labels), 8, lambda x: x, seed=3)
    first = [(x[:, 0, 0, 0].tolist(), y.tolist()) for x, y in batches()]
    again = [(x[:, 0, 0, 0].tolist(), y.tolist()) for x, y in batches()]
    assert first == again
    order = [i for xs, _ in first for i in xs]
    assert sorted(order) == list(range(32))  # every example once
    assert len(set(first[0][1])) >= 3  # the first batch already spans the classes
    assert [labels[i].item() for i in order] == [y for _, ys in first for y in ys]


@pytest.mark.slow
def test_predict_reads_another_seeds_model(multi, tmp_path):
    from PIL import Image

    out, _ = multi
    path = tmp_path / "x.png"
    Image.new("RGB", (16, 16), (200, 10, 10)).save(path)
    first, other = sftcore.load(out, "finetune"), sftcore.load(out, "finetune-seed1")
    assert first.classes == other.classes
    assert [p.top for p in first.predict([str(path)], 5)] != [p.top for p in other.predict([str(path)], 5)]
    with pytest.raises(sftcore.errors.SftError, match="finetune-seed7"):
        sftcore.load(out, "finetune-seed7")
    with pytest.raises(sftcore.errors.SftError, match="-seed<N>"):
        sftcore.load(out, "finetune-seedx")


@pytest.mark.slow
def test_lp_ft_probes_ten_epochs_under_auto(tmp_path):
    """Half of max_epochs would keep a stage that stops early a linear probe."""
    cfg = tiny.config(pretrain=False, baseline=False,
                      finetune={"epochs": "auto", "max_epochs": 14, "head": "lp_ft"})
    sftcore.run(cfg, out=tmp_path / "r")
    records = [r for r in tiny.read_metrics(tmp_path / "r") if r["stage"] == "finetune"]
    params = [r["trainable_params"] for r in records]
    assert params[:10] == [params[0]] * 10 and params[10] > params[0]
