"""`sft export`: torchscript, onnx and safetensors files that reproduce sftcore's logits without sftcore.

One tiny LeNet run and one tiny timm run (resnet10t, random init, 16-px shapes) are made once for the
module; each format is exported from both through the CLI, in-process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner

import sftcore
from sftcore.cli import cli
from sftcore.testing import tiny_config

ATOL = 1e-4
TIMM = {"name": "timm", "model": "resnet10t"}


def invoke(*args):
    return CliRunner().invoke(cli, ["export", *map(str, args)], catch_exceptions=True)


def one_error_line(result, code=2) -> str:
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest
    base = tmp_path_factory.mktemp("export-runs")
    sftcore.run(tiny_config(), out=base / "lenet", progress=False)
    sftcore.run(tiny_config(backbone=TIMM), out=base / "timm", progress=False)
    yield {"lenet": base / "lenet", "timm": base / "timm"}
    torch.set_num_threads(threads)


def batch(model, n, seed):
    """The model's input for ``n`` random uint8 images, prepared as the run's test images were."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *model.image_shape), dtype=torch.uint8, generator=g)
    return model.transform(list(images)).float().contiguous()


def reference(run, n=3, seed=7):
    model = sftcore.load(run)
    x = batch(model, n, seed)
    with torch.inference_mode():
        return model, x, model.module(x).float()


def export_ok(run, fmt, *extra):
    result = invoke(run, "--format", fmt, *extra)
    assert result.exit_code == 0, result.output
    paths = [line for line in result.output.splitlines() if line.strip()]
    sidecar = json.loads(open(paths[-1]).read())
    return paths, sidecar


def check_sidecar(sidecar, model, fmt):
    assert sidecar["format"] == fmt and sidecar["classes"] == model.classes
    assert sidecar["input_shape"] == list(model.input_shape) and sidecar["image_shape"] == list(model.image_shape)
    assert sidecar["mean"] == model.mean and sidecar["std"] == model.std
    assert sidecar["sftcore_version"] == sftcore.__version__ and sidecar["backbone"]["name"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lenet", "timm"])
def test_torchscript_runs_without_sftcore(runs, kind, tmp_path):
    run = runs[kind]
    paths, sidecar = export_ok(run, "torchscript")
    assert paths == [str(run / "export" / "finetune.torchscript.pt"), str(run / "export" / "finetune.torchscript.pt.json")]
    model, x, expected = reference(run)
    check_sidecar(sidecar, model, "torchscript")
    torch.save(x, tmp_path / "x.pt")
    # a fresh process where importing sftcore (or its plugins) fails: plain torch only
    code = textwrap.dedent(f"""
        import sys
        sys.modules["sftcore"] = None
        sys.modules["sftcore_plugins"] = None
        import torch
        net = torch.jit.load({paths[0]!r}, map_location="cpu").eval()
        with torch.no_grad():
            torch.save(net(torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'y.pt')!r})
        try:
            import sftcore
        except ImportError:
            pass
        else:
            raise SystemExit("sftcore was importable")
        assert not [m for m in sys.modules if m.startswith(("sftcore.", "sftcore_plugins."))]
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), expected, atol=ATOL, rtol=ATOL)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lenet", "timm"])
def test_onnx_matches_with_another_batch_size(runs, kind):
    ort = pytest.importorskip("onnxruntime")
    run = runs[kind]
    paths, sidecar = export_ok(run, "onnx")
    assert paths[0] == str(run / "export" / "finetune.onnx")
    model, x, expected = reference(run, n=7)  # exported with a batch of 2: the batch axis is dynamic
    check_sidecar(sidecar, model, "onnx")
    assert "exporter" in sidecar and sidecar["input_name"] == "input"
    session = ort.InferenceSession(paths[0], providers=["CPUExecutionProvider"])
    for n in (1, 7):
        got = session.run(None, {sidecar["input_name"]: x[:n].numpy()})[0]
        torch.testing.assert_close(torch.from_numpy(got), expected[:n], atol=ATOL, rtol=ATOL)


@pytest.mark.slow
def test_safetensors_lenet_is_the_transfer_model_state_dict(runs, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "sub" / "lenet.safetensors"
    paths, sidecar = export_ok(runs["lenet"], "safetensors", "--out", out)
    assert paths == [str(out), str(out) + ".json"]  # no native file: LeNet has no library of its own
    model, x, expected = reference(runs["lenet"])
    check_sidecar(sidecar, model, "safetensors")
    assert "native_weights" not in sidecar
    state = load_file(str(out))
    assert all(k.startswith(("backbone.", "head.")) for k in state)
    fresh = sftcore.load(runs["lenet"])
    for p in fresh.module.parameters():
        p.data.zero_()
    fresh.module.load_state_dict(state, strict=True)
    with torch.inference_mode():
        torch.testing.assert_close(fresh.module(x), expected, atol=ATOL, rtol=ATOL)


@pytest.mark.slow
def test_safetensors_timm_loads_strictly_into_timm(runs):
    import timm
    from safetensors.torch import load_file

    run = runs["timm"]
    paths, sidecar = export_ok(run, "safetensors")
    native = run / "export" / "finetune.native.safetensors"
    assert paths == [str(run / "export" / "finetune.safetensors"), str(native),
                     str(run / "export" / "finetune.safetensors.json")]
    model, x, expected = reference(run)
    check_sidecar(sidecar, model, "safetensors")
    assert sidecar["native_weights"] == native.name and sidecar["timm_model"] == "resnet10t"
    net = timm.create_model(sidecar["timm_model"], num_classes=len(sidecar["classes"]), **sidecar["timm_kwargs"])
    net.load_state_dict(load_file(str(native)), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), expected, atol=ATOL, rtol=ATOL)
    assert set(load_file(paths[0])) == set(model.module.state_dict())


@pytest.mark.slow
def test_existing_output_is_refused_without_force(runs, tmp_path):
    out = tmp_path / "m.pt"
    export_ok(runs["lenet"], "torchscript", "--out", out)
    line = one_error_line(invoke(runs["lenet"], "--format", "torchscript", "--out", out))
    assert "already exists" in line and "--force" in line
    (tmp_path / "m.pt").unlink()  # the sidecar alone also blocks
    line = one_error_line(invoke(runs["lenet"], "--format", "torchscript", "--out", out))
    assert "m.pt.json" in line
    export_ok(runs["lenet"], "torchscript", "--out", out, "--force")
    assert out.is_file()


@pytest.mark.slow
def test_unknown_format_missing_run_and_unknown_stage(runs, tmp_path):
    assert "tflite" in one_error_line(invoke(runs["lenet"], "--format", "tflite"))
    assert "--format is required" in one_error_line(invoke(runs["lenet"]))
    line = one_error_line(invoke(tmp_path / "nope", "--format", "onnx"))
    assert "not found" in line
    line = one_error_line(invoke(runs["lenet"], "--format", "torchscript", "--stage", "pretrain"))
    assert "no pretrain stage" in line
    line = one_error_line(invoke(runs["lenet"], "--format", "torchscript", "--stage", "bogus"))
    assert "--stage" in line
    assert not (tmp_path / "nope").exists()


@pytest.mark.slow
def test_corrupt_checkpoint_is_one_line(runs, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs["lenet"], run, ignore=shutil.ignore_patterns("export"))
    (run / "checkpoints" / "finetune.pt").write_bytes(b"not a zip file")
    line = one_error_line(invoke(run, "--format", "safetensors"))
    assert "finetune.pt" in line
    assert not (run / "export" / "finetune.safetensors").exists()


@pytest.mark.slow
def test_missing_onnx_names_the_extra(runs, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    line = one_error_line(invoke(runs["lenet"], "--format", "onnx", "--out", tmp_path / "m.onnx"))
    assert "pip install 'sftcore[export]'" in line
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_untraceable_model_is_one_clear_line(runs, monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("Tracer cannot infer type of output\nmore detail")

    monkeypatch.setattr(torch.jit, "trace", broken)
    line = one_error_line(invoke(runs["lenet"], "--format", "torchscript", "--out", tmp_path / "m.pt"))
    assert "torch.jit.trace" in line and "Tracer cannot infer" in line and "--format onnx" in line
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "m.pt.json").exists()
