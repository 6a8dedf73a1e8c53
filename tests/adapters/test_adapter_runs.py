"""Adapters in whole tiny runs: the frozen base stays bit-identical through training, what trains moves,
summary.json reports the parameter counts, and the config's checks of the stage key."""

import json

import pytest
import torch

import sftcore
from sftcore import hookimpl
from sftcore.api import Adapter, Callback, freeze
from sftcore.errors import ConfigError
from sftcore.testing import registry, tiny_config
from sftcore._config.resolve import resolve

peft = pytest.importorskip("peft")


class Watch(Callback):
    """The model's state dict at the start and the end of each stage (the base's tensors, compared bit for bit)."""

    def __init__(self):
        self.start, self.end, self.trainable = {}, {}, {}

    def on_stage_start(self, stage):
        self.start[stage.name] = {k: v.detach().clone() for k, v in stage.model.state_dict().items()}

    def on_stage_end(self, stage, result):
        self.end[stage.name] = {k: v.detach().clone() for k, v in stage.model.state_dict().items()}


def run(tmp_path, **config):
    watch = Watch()
    summary = sftcore.run(tiny_config(**config), out=tmp_path / "run", callbacks=[watch])
    return summary, watch.start["finetune"], watch.end["finetune"]


def moved(start, end) -> set[str]:
    return {k for k in start if not torch.equal(start[k], end[k])}


@pytest.mark.slow
def test_bitfit_trains_only_biases_and_the_head_and_reports_the_counts(tmp_path, one_thread):
    summary, start, end = run(tmp_path, adapter="bitfit", epochs=2)
    changed = moved(start, end)
    assert changed and all(k.endswith(".bias") or k.startswith("head.") for k in changed)
    assert any(k.startswith("backbone.") for k in changed)  # the biases did train
    result = summary["finetune"]
    biases = sum(v.numel() for k, v in start.items() if k.startswith("backbone.") and k.endswith(".bias"))
    head = sum(v.numel() for k, v in start.items() if k.startswith("head."))
    assert (result["adapter"], result["trainable_params"]) == ("bitfit", biases + head)
    assert result["total_params"] == sum(v.numel() for v in start.values())
    written = json.loads((tmp_path / "run" / "summary.json").read_text())["finetune"]
    assert (written["trainable_params"], written["total_params"]) == (result["trainable_params"], result["total_params"])


@pytest.mark.slow
def test_without_an_adapter_every_parameter_is_trainable(tmp_path, one_thread):
    summary, _, _ = run(tmp_path)
    result = summary["finetune"]
    assert result["adapter"] is None and result["trainable_params"] == result["total_params"] > 0


@pytest.mark.slow
def test_lora_with_lp_ft_layer_decay_and_l2_sp_keeps_the_base_bit_identical(tmp_path, one_thread):
    summary, start, end = run(
        tmp_path,
        adapter={"name": "lora", "r": 2, "alpha": 4, "target": "fc1\\.0|fc2\\.0"},
        head={"name": "lp_ft", "probe_epochs": 1},
        param_groups={"name": "layer_decay", "decay": 0.5},
        regularizers=[{"name": "l2_sp", "alpha": 0.1, "params": "all"}],
        epochs=3,
    )
    changed = moved(start, end)
    base = [k for k in start if k.startswith("backbone.") and ".lora_" not in k]
    assert base and not changed & set(base)  # bit-identical, every tensor of the frozen base
    assert {k for k in changed if k.startswith("backbone.")} >= {
        "backbone.fc1.0.lora_B.default.weight", "backbone.fc2.0.lora_B.default.weight"}
    assert all(not torch.any(start[k]) for k in start if ".lora_B." in k)  # B starts at zero
    result = summary["finetune"]
    lora = sum(v.numel() for k, v in start.items() if ".lora_" in k)
    head = sum(v.numel() for k, v in start.items() if k.startswith("head."))
    assert (result["adapter"], result["trainable_params"]) == ("lora", lora + head)


@pytest.mark.slow
def test_a_third_party_adapter_is_a_few_lines(tmp_path, plugin, one_thread):
    class FirstConvOnly(Adapter):
        """Only LeNet's first convolution trains."""

        def apply(self, backbone):
            freeze(backbone.features)
            backbone.features.stage1.requires_grad_(True)

    class Plugin:
        @hookimpl
        def register_adapters(self, register):
            register("first_conv_only", FirstConvOnly)

    plugin(Plugin(), "first-conv-only")
    summary, start, end = run(tmp_path, adapter="first_conv_only")
    changed = moved(start, end)
    assert {k for k in changed if k.startswith("backbone.")} == {"backbone.stage1.0.weight", "backbone.stage1.0.bias"}
    assert summary["finetune"]["adapter"] == "first_conv_only"


@pytest.mark.slow
def test_an_adapter_that_leaves_nothing_trainable_is_one_line(tmp_path, plugin, one_thread):
    class Nothing(Adapter):
        """Freezes everything."""

        def apply(self, backbone):
            freeze(backbone.features)

    class Plugin:
        @hookimpl
        def register_adapters(self, register):
            register("nothing", Nothing)

    plugin(Plugin(), "nothing")
    with pytest.raises(ConfigError, match="finetune.adapter 'nothing' left no backbone parameter trainable"):
        run(tmp_path, adapter="nothing")


# --------------------------------------------------------------------------- the config key
def test_the_adapter_key_resolves_and_the_baseline_drops_it():
    cfg = resolve(tiny_config(adapter={"name": "lora", "r": 4}, baseline=True), registry())
    assert cfg["finetune"]["adapter"] == {"name": "lora", "r": 4}
    assert cfg["baseline"]["adapter"] is None
    assert resolve(tiny_config(), registry())["finetune"]["adapter"] is None


@pytest.mark.parametrize(
    "adapter,message",
    [
        ({"name": "lora", "r": 0}, "config: finetune.adapter.r must be"),
        ({"name": "lora", "target": "("}, "config: finetune.adapter.target must be a regular expression, got '('"),
        ({"name": "lora", "target": 3}, "config: finetune.adapter.target must be a regular expression over"),
        ("lorra", "config: finetune.adapter: unknown adapter 'lorra' (did you mean 'lora'?)"),
        ({"name": "bitfit", "r": 4}, "config: finetune.adapter: adapter 'bitfit' has no option 'r'"),
    ],
)
def test_bad_adapters_are_one_line_at_resolve(adapter, message):
    with pytest.raises(ConfigError) as info:
        resolve(tiny_config(adapter=adapter), registry())
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_pretrain_takes_no_adapter():
    cfg = tiny_config(pretrain={"adapter": "bitfit"})
    with pytest.raises(ConfigError, match="config: pretrain.adapter must be null"):
        resolve(cfg, registry())


@pytest.mark.slow
def test_a_lora_target_matching_nothing_stops_the_run_before_training_with_one_line(tmp_path, one_thread):
    with pytest.raises(ConfigError) as info:
        run(tmp_path, adapter={"name": "lora", "target": "nope"})
    assert str(info.value) == (
        "config: finetune.adapter: lora: the backbone has no Linear or Conv layer named 'nope'; its Linear and "
        "Conv layers: stage1.0, stage2.0, fc1.0, fc2.0"
    )
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or not (tmp_path / "run" / "metrics.jsonl").read_text()


# --------------------------------------------------------------------------- sweeps
@pytest.mark.slow
def test_a_sweep_grids_over_adapters(tmp_path, monkeypatch):
    import tiny

    monkeypatch.chdir(tmp_path)
    tiny.write_yaml(tmp_path / "base.yaml", tiny_config())
    tiny.write_yaml(tmp_path / "s.yaml", {"name": "s", "base": "base.yaml", "grid": {
        "finetune.adapter": [None, {"name": "lora", "r": 2}, {"name": "bitfit"}]}})
    result = tiny.invoke("sweep", "s.yaml", "--out", "sw")
    assert result.exit_code == 0, result.output
    cells = json.loads((tmp_path / "sw" / "sweep.json").read_text())["cells"]
    assert [c["name"] for c in cells] == ["000-adapter=null", "001-adapter=lora_r2", "002-adapter=bitfit"]
    counts = {}
    for cell in cells:
        result = json.loads((tmp_path / "sw" / cell["run_dir"] / "summary.json").read_text())["finetune"]
        counts[result["adapter"]] = (result["trainable_params"], result["total_params"])
    assert counts[None][0] == counts[None][1] == counts["bitfit"][1]
    assert counts["bitfit"][0] < counts[None][0] and counts["lora"][0] < counts["lora"][1]
