"""A stage under an adapter resumes exactly: interrupted mid-epoch (Ctrl-C in-process, SIGKILL of a real
`sft run`), `--resume` ends with the uninterrupted run's metrics and bit-identical weights. LoRA's dropout
draws from the global random state, which the checkpoints carry."""

import copy
import signal
import time

import pytest
import torch

import sftcore
import tiny
from sftcore._run import runner
from sftcore.errors import Interrupted
from test_kill import finish, start, wait_for_epochs
from test_resume import StopAfter, assert_same_weights

pytest.importorskip("peft")

CFG = {
    "name": "resume-lora", "seed": 0, "seeds": 1, "backbone": {"name": "lenet", "img_size": 24}, "device": "cpu",
    "finetune": {"dataset": tiny.shapes("target", train_per_class=30, size=24), "epochs": 4, "batch_size": 8,
                 "head": {"name": "lp_ft", "probe_epochs": 1}, "regularizers": [{"name": "l2_sp", "params": "all"}],
                 "adapter": {"name": "lora", "r": 2, "dropout": 0.2, "target": "fc1\\.0|fc2\\.0"},
                 "select": "best"},  # the progress file then also holds the best epoch's weights, compact
}


@pytest.mark.slow
@pytest.mark.parametrize("looks", [7, 15])  # mid-epoch in the probe and after it
def test_ctrl_c_mid_epoch_under_lora_resumes_exactly(tmp_path, monkeypatch, one_thread, looks):
    reference = sftcore.run(copy.deepcopy(CFG), out=tmp_path / "ref")
    with monkeypatch.context() as m:
        m.setattr(runner, "StopSignals", lambda **_: StopAfter(looks))
        with pytest.raises(Interrupted):
            sftcore.run(copy.deepcopy(CFG), out=tmp_path / "cut")
    progress = torch.load(tmp_path / "cut" / "checkpoints" / "finetune-last.pt", weights_only=True)
    for part in (progress["model"], progress["start_state"], (progress["best"] or {}).get("state", {})):
        assert not any(k.endswith("base_layer.weight") or k == "backbone.stage1.0.weight" for k in part)
    resumed = sftcore.run(resume=tmp_path / "cut")
    assert resumed["finetune"]["test_accuracy"] == reference["finetune"]["test_accuracy"]
    assert resumed["finetune"]["trainable_params"] == reference["finetune"]["trainable_params"]
    assert tiny.without_seconds(tiny.read_metrics(tmp_path / "cut")) == \
        tiny.without_seconds(tiny.read_metrics(tmp_path / "ref"))
    assert_same_weights(tmp_path / "ref", tmp_path / "cut", stages=("finetune",))


@pytest.mark.slow
def test_sigkill_mid_epoch_under_lora_then_resume_is_exact(tmp_path):
    cfg = tiny.write_yaml(tmp_path / "cfg.yaml", CFG)
    finish("run", cfg, "--out", tmp_path / "ref")
    run = tmp_path / "run"
    proc = start("run", cfg, "--out", run)
    wait_for_epochs(run, "finetune", 2, proc)
    time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finish("run", "--resume", run)
    assert tiny.without_seconds(tiny.read_metrics(tmp_path / "ref")) == tiny.without_seconds(tiny.read_metrics(run))
    assert_same_weights(tmp_path / "ref", run, stages=("finetune",))
