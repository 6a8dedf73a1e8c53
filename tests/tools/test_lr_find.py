"""`sft lr-find`: the exponential lr range test on a stage's real setup (sftcore/_lr_find.py, docs/lr-find.md)."""

from __future__ import annotations

import json
import math
import random

import pytest

import tiny
from sftcore._tools import lr_find as lrf

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------- the numbers
def fastai_valley(losses):
    """fastai's valley, its double loop as written (fastai/callback/schedule.py), to check ours against."""
    n, max_start, max_end, lds = len(losses), 0, 0, [1] * len(losses)
    for i in range(1, n):
        for j in range(0, i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end, max_start = i, i - lds[i]
    sections = (max_end - max_start) / 3
    return max_start + int(sections) + int(sections / 2)


def test_schedule_is_geometric_from_start_to_end():
    lrs = lrf.lr_schedule(1e-6, 1.0, 13)
    assert len(lrs) == 13 and lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1.0)
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert all(r == pytest.approx(10 ** 0.5) for r in ratios)


def test_smoothing_is_fastais_bias_corrected_ema():
    assert lrf.smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])  # the bias correction at work
    # by hand: avg1 = 0.02 * 1 -> 0.02 / 0.02 = 1; avg2 = 0.98 * 0.02 + 0.02 * 3 = 0.0796 -> / (1 - 0.98**2)
    assert lrf.smooth([1.0, 3.0]) == pytest.approx([1.0, 0.0796 / 0.0396])


def test_valley_and_steepest_on_a_made_up_curve():
    losses = [5, 4, 6, 3, 2.5, 2, 1.5, 1, 3, 8]
    lrs = [10.0 ** (i - 7) for i in range(10)]
    # longest decreasing run: 5 4 3 2.5 2 1.5 1 (7 long, ends at 7): max_start = 7 - 7 = 0,
    # sections = 7 / 3, index = 0 + int(2.33) + int(1.17) = 3
    assert lrf.valley(losses) == 3
    # slopes per decade: -1, 2, -3, -0.5, ...: steepest from index 2
    assert lrf.steepest(lrs, losses) == 2


def test_valley_equals_fastais_double_loop():
    assert lrf.valley([1.0]) == 0 and lrf.valley([1.0, 2.0, 3.0]) == 0  # nothing decreasing: index 0
    # a valley of two from the first point: fastai's max_start is -1, its index -1 (the last point); ours 0
    assert fastai_valley([2.0, 1.0]) == -1 and lrf.valley([2.0, 1.0]) == 0
    rng = random.Random(0)
    for _ in range(300):
        losses = [rng.choice([1.0, 2.0, 3.0]) + rng.random() * rng.choice([0, 1]) for _ in range(rng.randint(1, 40))]
        assert lrf.valley(losses) == max(0, fastai_valley(losses)), losses


def test_suggestion_uses_fastais_window_and_stops_at_a_nan():
    lrs = lrf.lr_schedule(1e-5, 1.0, 30)
    # flat, then a valley from 10 to 20, then up; the first 3 (30 // 10) and the last 5 are dropped
    smoothed = [0.1] * 3 + [5.0] * 7 + [5.0 - 0.4 * i for i in range(11)] + [2.0 + i for i in range(9)]
    valley, steep = lrf.suggest(lrs, smoothed, 30)
    window = smoothed[3:25]
    assert valley == 3 + lrf.valley(window) and steep == 3 + lrf.steepest(lrs[3:25], window)
    assert 10 <= valley <= 20
    cut = smoothed[:12] + [math.nan] * 18
    assert lrf.suggest(lrs, cut, 30)[0] < 12
    assert lrf.suggest(lrs, [math.nan] * 30, 30) is None


# ---------------------------------------------------------------------------------------------- the command
def _config(tmp_path, **kwargs):
    return tiny.write_yaml(tmp_path / "t.yaml", tiny.config(**kwargs))


def test_json_shape_geometric_lrs_and_nothing_left_behind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _config(tmp_path, baseline=False)
    out = json.loads(tiny.ok(tiny.invoke("lr-find", cfg, "--steps", "12", "--start-lr", "1e-5", "--end-lr", "1e-2",
                                         "--json")))
    assert {"stage", "epoch", "lrs", "losses", "smoothed", "stopped", "suggestion", "steepest", "group_lrs",
            "config_lr", "plot", "plot_skipped"} <= out.keys()
    assert out["stage"] == "finetune" and out["stopped"] is None and len(out["lrs"]) == 12
    assert out["lrs"][0] == pytest.approx(1e-5) and out["lrs"][-1] == pytest.approx(1e-2)
    assert all(b / a == pytest.approx(10 ** (3 / 11)) for a, b in zip(out["lrs"], out["lrs"][1:]))
    assert len(out["losses"]) == len(out["smoothed"]) == 12 and all(math.isfinite(v) for v in out["losses"])
    assert out["lrs"][0] <= out["suggestion"] <= out["lrs"][-1]
    assert out["suggestion"] in out["lrs"] and out["steepest"] in out["lrs"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["t.yaml"] + (["lr-find-finetune.png"] if out["plot"] else [])), left
    assert not list(tmp_path.rglob("*.pt"))


def test_divergence_stops_early_and_the_suggestion_is_in_range(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _config(tmp_path, pretrain=False, baseline=False)
    out = json.loads(tiny.ok(tiny.invoke("lr-find", cfg, "--steps", "60", "--start-lr", "1e-3", "--end-lr", "1e8",
                                         "--json")))
    assert out["stopped"] in ("diverged", "non-finite") and len(out["lrs"]) < 60
    smoothed = [math.inf if v is None else v for v in out["smoothed"]]
    assert smoothed[-1] > lrf.DIVERGE * min(smoothed[:-1]) or not math.isfinite(smoothed[-1])
    assert all(s <= lrf.DIVERGE * min(smoothed[:i + 1]) for i, s in enumerate(smoothed[:-1]))  # not earlier
    assert out["lrs"][0] <= out["suggestion"] <= out["lrs"][-1]


@pytest.mark.slow
def test_groups_keep_their_lr_ratio_and_the_head_follows_the_schedule(tmp_path, monkeypatch):
    from sftcore._train.loop import Stage

    seen = []
    step = Stage.step

    def spy(self, epoch, k, x, y, sums):
        seen.append({g["name"]: g["lr"] for g in self.optimizer.param_groups})
        return step(self, epoch, k, x, y, sums)

    monkeypatch.setattr(Stage, "step", spy)
    monkeypatch.chdir(tmp_path)
    cfg = tiny.config(pretrain=False, baseline=False, finetune={"backbone_lr_mult": 0.1, "schedule": "cosine"})
    finding = lrf.find(tiny.write_yaml(tmp_path / "t.yaml", cfg), steps=8, start_lr=1e-4, end_lr=1e-1)
    assert [s["head"] for s in seen] == pytest.approx(finding.lrs)  # the schedule's factor plays no part
    assert all(s["backbone"] == pytest.approx(0.1 * s["head"]) for s in seen)
    assert finding.group_lrs["backbone"] == pytest.approx(0.1 * finding.suggestion)
    assert finding.group_lrs["head"] == pytest.approx(finding.suggestion)


@pytest.mark.slow
def test_the_head_strategy_state_of_the_chosen_epoch(tmp_path, monkeypatch):
    from sftcore._train.loop import Stage

    trains_backbone = []
    step = Stage.step

    def spy(self, epoch, k, x, y, sums):
        trains_backbone.append(any(p.requires_grad for p in self.model.backbone.parameters()))
        return step(self, epoch, k, x, y, sums)

    monkeypatch.setattr(Stage, "step", spy)
    cfg = tiny.write_yaml(tmp_path / "t.yaml", tiny.config(
        pretrain=False, baseline=False, finetune={"head": {"name": "lp_ft", "probe_epochs": 1}}))
    lrf.find(cfg, steps=6, end_lr=1e-3)
    assert trains_backbone == [False] * 6  # epoch 0: the linear probe
    trains_backbone.clear()
    lrf.find(cfg, steps=6, end_lr=1e-3, epoch=1)
    assert trains_backbone == [True] * 6


def test_no_model_weights_are_saved(tmp_path, monkeypatch):
    import torch

    from sftcore._rundir import checkpoints as _checkpoints

    saved = []
    monkeypatch.setattr(torch, "save", lambda *a, **k: saved.append(a[1] if len(a) > 1 else k))
    for name in ("save_progress", "save_model_file"):
        monkeypatch.setattr(_checkpoints, name, lambda *a, _name=name, **k: saved.append(_name))
    monkeypatch.chdir(tmp_path)
    cfg = _config(tmp_path, pretrain=False)
    tiny.ok(tiny.invoke("lr-find", cfg, "--steps", "6", "--stage", "baseline"))
    tiny.ok(tiny.invoke("lr-find", cfg, "--steps", "6", "--out", "f.png"))
    assert saved == [] and not (tmp_path / "runs").exists()


def test_png_written_and_not_overwritten_without_force(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    cfg = _config(tmp_path, pretrain=False, baseline=False)
    args = ("lr-find", cfg, "--steps", "6", "--out", "curve.png")
    text = tiny.ok(tiny.invoke(*args))
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "suggested lr (valley)" in text and "--set finetune.optimizer.lr=" in text
    line = tiny.one_error_line(tiny.invoke(*args))
    assert "curve.png" in line and "--force" in line
    tiny.ok(tiny.invoke(*args, "--force"))


def test_png_skipped_without_matplotlib(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.chdir(tmp_path)
    cfg = _config(tmp_path, pretrain=False, baseline=False)
    text = tiny.ok(tiny.invoke("lr-find", cfg, "--steps", "6"))
    assert "plot: skipped, matplotlib is not installed" in text
    assert not (tmp_path / "lr-find-finetune.png").exists()


@pytest.mark.parametrize("args, cfg_kwargs, says", [
    (["--stage", "finetune"], {"finetune": False}, "--stage finetune"),
    (["--stage", "baseline"], {"baseline": False}, "--stage baseline"),
    (["--stage", "evaluate"], {}, "not a stage"),
    ([], {"pretrain": False, "finetune": False}, "nothing to run"),
    (["--start-lr", "1", "--end-lr", "1e-3"], {}, "below --end-lr"),
    (["--start-lr", "0"], {}, "positive"),
    (["--end-lr", "-1"], {}, "positive"),
    (["--start-lr", "abc"], {}, "--start-lr must be a number"),
    (["--steps", "4"], {}, "--steps must be at least 5"),
    (["--steps", "5.5"], {}, "--steps must be an integer"),
    (["--epoch", "7"], {}, "--epoch 7"),
    (["--set", "finetune.epochs=-1"], {}, "finetune.epochs"),
    (["--set", "no_such_key=1"], {}, "no_such_key"),
])
def test_bad_input_is_one_line(tmp_path, monkeypatch, args, cfg_kwargs, says):
    monkeypatch.chdir(tmp_path)
    cfg = _config(tmp_path, **cfg_kwargs)
    line = tiny.one_error_line(tiny.invoke("lr-find", cfg, *args))
    assert says in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.yaml"]


def test_out_is_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plots").mkdir()
    line = tiny.one_error_line(tiny.invoke("lr-find", _config(tmp_path), "--out", "plots"))
    assert "is a folder" in line
