"""A stage trained under LoRA outside the run: sftcore.load rebuilds base + adapter and merges it, and
`sft export` writes the merged weights (TorchScript, ONNX, timm's own state dict) whose logits equal the
unmerged model's within float tolerance. One tiny run of a 1-block 32-px ViT, made once for the module."""

import copy
import json

import pytest
import torch
from click.testing import CliRunner

import sftcore
from sftcore.api import Callback
from sftcore.cli import cli
from sftcore.testing import tiny_config

peft = pytest.importorskip("peft")
ATOL = 1e-4
VIT = {"name": "timm", "model": "vit_tiny_patch16_224", "img_size": 32, "model_args": {"depth": 1}}
LORA = {"name": "lora", "r": 2, "alpha": 4, "target": "qkv|fc1|fc2"}


class Keep(Callback):
    """The finetune stage's trained model, unmerged (LoRA layers and all)."""

    def on_stage_end(self, stage, result):
        self.model = copy.deepcopy(stage.model).cpu().eval()


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out, keep = tmp_path_factory.mktemp("lora-run") / "run", Keep()
    sftcore.run(tiny_config(backbone=VIT, adapter=LORA, epochs=1, optimizer={"name": "sgd", "lr": 0.5}),
                out=out, callbacks=[keep])
    with torch.no_grad():  # the trained B factors are not zero: the merge must fold a real update
        assert any(p.abs().sum() > 0 for n, p in keep.model.named_parameters() if ".lora_B." in n)
    yield out, keep.model
    torch.set_num_threads(threads)


def unmerged_logits(model, unmerged):
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (3, *model.image_shape), dtype=torch.uint8, generator=g)
    x = model.transform(list(images)).float().cpu().contiguous()
    with torch.no_grad():
        return x, unmerged(x)


@pytest.mark.slow
def test_load_rebuilds_base_and_adapter_then_merges(lora_run):
    run, unmerged = lora_run
    model = sftcore.load(run)
    assert not any(".lora_" in n for n, _ in model.module.named_parameters())
    x, expected = unmerged_logits(model, unmerged)
    with torch.no_grad():
        torch.testing.assert_close(model.module(x), expected, atol=ATOL, rtol=ATOL)
    assert model.predict([torch.zeros(model.image_shape, dtype=torch.uint8)])[0].label in model.classes


@pytest.mark.slow
def test_export_writes_the_merged_weights_in_every_format(lora_run):
    import timm
    from safetensors.torch import load_file

    run, unmerged = lora_run
    model = sftcore.load(run)
    x, expected = unmerged_logits(model, unmerged)
    for fmt in ("torchscript", "onnx", "safetensors"):
        result = CliRunner().invoke(cli, ["export", str(run), "--format", fmt], catch_exceptions=True)
        assert result.exit_code == 0, result.output
    scripted = torch.jit.load(str(run / "export" / "finetune.torchscript.pt")).eval()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(run / "export" / "finetune.onnx"))
    sidecar = json.loads((run / "export" / "finetune.safetensors.json").read_text())
    net = timm.create_model(sidecar["timm_model"], num_classes=len(sidecar["classes"]), **sidecar["timm_kwargs"])
    net.load_state_dict(load_file(str(run / "export" / "finetune.native.safetensors")), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), expected, atol=ATOL, rtol=ATOL)
        torch.testing.assert_close(net.eval()(x), expected, atol=ATOL, rtol=ATOL)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), expected, atol=ATOL, rtol=ATOL)
