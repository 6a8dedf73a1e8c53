"""The CUDA path: data, augmentation and training on the GPU. Skipped where torch sees no GPU."""

import pytest
import torch

import sftcore

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SHAPES = {"name": "shapes", "train_per_class": 24, "test_per_class": 8, "size": 32}


def _config(precision: str) -> dict:
    return {
        "name": "gpu", "seeds": 1, "device": "cuda", "precision": precision, "channels_last": True, "backbone": "lenet",
        "pretrain": {"dataset": {**SHAPES, "task": "source"}, "epochs": 2, "batch_size": 32},
        "finetune": {"dataset": {**SHAPES, "task": "source", "labels_per_class": 6}, "epochs": 2,
                     "batch_size": 8, "head": "match_classes", "regularizers": ["l2_sp", "l2"]},
        "baseline": {"name": "scratch", "max_epochs": 6, "patience": 2},  # epochs: auto, kept short
    }


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_a_whole_run_on_the_gpu(tmp_path, precision):
    if precision == "bf16" and torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("bf16 needs an Ampere or newer GPU")
    summary = sftcore.run(_config(precision), out=tmp_path / "r")
    assert summary["performance"]["device"].startswith("cuda")
    assert summary["performance"]["precision"] == precision
    for stage in ("pretrain", "finetune", "baseline"):
        assert 0.0 <= summary[stage]["test_accuracy"] <= 1.0
    assert summary["transfer_gain"] is not None


@pytest.mark.slow
def test_imprint_on_the_gpu(tmp_path):
    cfg = _config("fp32")
    cfg["finetune"]["head"] = "imprint"
    assert 0.0 <= sftcore.run(cfg, out=tmp_path / "r")["finetune"]["test_accuracy"] <= 1.0


@pytest.mark.slow
def test_resume_on_the_gpu_after_an_interrupted_baseline(tmp_path, monkeypatch):
    from sftcore._train import loop as training

    original = training.Stage.run

    class Interrupted(Exception):
        pass

    def run(self):
        if self.name == "baseline":
            raise Interrupted
        return original(self)

    with monkeypatch.context() as m:
        m.setattr(training.Stage, "run", run)
        with pytest.raises(Interrupted):
            sftcore.run(_config("fp32"), out=tmp_path / "r")
    summary = sftcore.run(resume=tmp_path / "r")  # finetune's saved result meets the baseline's
    assert summary["transfer_gain"] is not None


@pytest.mark.slow
@pytest.mark.parametrize("looks", [5, 30])  # mid-epoch in pretrain; an epoch end in finetune
def test_resume_on_the_gpu_after_ctrl_c_is_exact(tmp_path, monkeypatch, looks):
    """A mid-epoch checkpoint holds CPU RNG states and the device generator's state: loading it
    onto the GPU and continuing must reproduce the uninterrupted run (fp32, deterministic here)."""
    from test_resume import StopAfter, assert_same_weights

    from sftcore._run import runner
    from sftcore.errors import Interrupted

    cfg = _config("fp32")
    cfg["finetune"]["head"] = "lp_ft"
    reference = sftcore.run(cfg, out=tmp_path / "ref")
    with monkeypatch.context() as m:
        m.setattr(runner, "StopSignals", lambda **_: StopAfter(looks))
        with pytest.raises(Interrupted):
            sftcore.run(cfg, out=tmp_path / "cut")
    resumed = sftcore.run(resume=tmp_path / "cut")
    for stage in ("pretrain", "finetune", "baseline"):
        assert resumed[stage]["test_accuracy"] == pytest.approx(reference[stage]["test_accuracy"], abs=0.02)
    if torch.backends.cudnn.deterministic:
        assert_same_weights(tmp_path / "ref", tmp_path / "cut")
