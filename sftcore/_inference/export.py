"""``sft export``: a run's trained model as a file that runs without sftcore.

Every format takes normalised float images ``[N, C, H, W]`` of the run's ``input_shape`` and returns
logits ``[N, len(classes)]``. Each output gets a JSON sidecar (the output's name plus ``.json``) with
what deployment without sftcore needs: the classes, the input and image shapes, the normalisation,
the backbone entry, the sftcore version and how to run the file.

- ``torchscript``: ``torch.jit.trace`` of the features and head in a plain ``nn.Sequential``; the file
  runs under ``torch.jit.load`` with nothing of sftcore importable.
- ``onnx``: ``torch.onnx.export`` (the torch.export-based exporter, ``dynamo=True``; the legacy
  TorchScript-based one, ``dynamo=False``, when that fails) with a dynamic batch axis, checked with
  onnxruntime against the torch logits on another batch size.
- ``safetensors``: the TransferModel state dict (``backbone.*``, ``head.*``); for a backbone whose
  plugin sets ``Backbone.native_state_dict`` (the built-in ``timm`` one), also
  ``<stem>.native.safetensors``, the state dict of the library's own model (for timm:
  ``timm.create_model(sidecar["timm_model"], num_classes=len(sidecar["classes"]), **sidecar["timm_kwargs"])``
  loads it with ``strict=True``).

Every export is checked before it is written: the exported model's logits must match sftcore's.
"""

from __future__ import annotations

import copy
import io
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path

from sftcore._fileio import storage
from sftcore._rundir import checkpoints
from sftcore._rundir import layout as rundir
from sftcore.errors import SftError

FORMATS = {"torchscript": ".torchscript.pt", "onnx": ".onnx", "safetensors": ".safetensors"}
EXTRA = "pip install 'sftcore[export]'"
EXPORT_BATCH = 2  # the batch the model is traced/exported with
CHECK_BATCH = 5  # another batch size: checks that the batch axis is not baked in
ATOL, RTOL = 1e-4, 1e-4


def export(run_dir, fmt: str, stage: str | None = None, out=None, force: bool = False) -> list[Path]:
    """Export ``run_dir``'s ``stage`` (default as ``sftcore.load``: finetune, else baseline, else pretrain)
    as ``fmt``; returns the paths written, the model file first and its JSON sidecar last."""
    from .load import model_file

    if fmt not in FORMATS:
        raise SftError(f"--format must be one of {', '.join(FORMATS)}, not '{fmt}'")
    if fmt == "onnx":
        _need("onnx", "onnxruntime")
    if fmt == "safetensors":
        _need("safetensors")
    path = model_file(run_dir, stage)  # unknown stage / missing run: sftcore.load's own errors
    target = _target(Path(run_dir), path, fmt, out)
    sidecar = target.with_name(target.name + ".json")
    _refuse_existing([target, sidecar], force)

    import torch

    from sftcore._version import __version__

    from .load import load

    model = load(path)
    module = _plain(model)
    inputs = _inputs(model, EXPORT_BATCH, seed=0)
    check = _inputs(model, CHECK_BATCH, seed=1)
    with torch.inference_mode():
        expected = model.module(check).float()

    info = {
        "format": fmt,
        "file": target.name,
        "stage": path.stem,
        "classes": list(model.classes),
        "input_shape": list(model.input_shape),
        "image_shape": list(model.image_shape),
        "mean": list(model.mean),
        "std": list(model.std),
        "input": "float32 [N, C, H, W] of input_shape, prepared as the run prepared its test images: decode; "
        "bring to image_shape's channels (alpha onto white; grey from colour with PIL's L weights); "
        "resize (bicubic) to cover image_shape's H x W and crop the centre; then, if input_shape's "
        "channels differ, repeat grey to 3 channels or average 3 to 1; resize to input_shape's H x W "
        "(bilinear, antialiased when shrinking) if it differs; x / 255, minus mean, divided by std "
        "per channel",
        "tta": model.tta,
        "output": "logits [N, len(classes)]; softmax over dim 1 gives class probabilities",
        "backbone": _backbone_entry(path),
        "sftcore_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
    }
    if model.tta == "flip":
        info["tta_note"] = (
            "the run scored each image as the mean softmax of it and its horizontal mirror "
            "(tta: flip); this file is one pass: average softmax(f(x)) and softmax(f(x.flip(3))) "
            "to match"
        )
    storage.make_dir(target.parent)
    written = _write(fmt, model, module, target, info, (inputs, check, expected), force)
    storage.write_json(sidecar, info)
    return written + [sidecar]


def _write(fmt: str, model, module, target: Path, info: dict, batches: tuple, force: bool) -> list[Path]:
    """The exported file(s), each checked against sftcore's logits before it is written; ``info`` (the
    sidecar) gains what the format adds."""
    inputs, check, expected = batches
    written = [target]
    if fmt == "torchscript":
        data = _torchscript(module, inputs, check, expected)
        info["notes"] = "torch.jit.load(file).eval()(x) -> logits; needs torch only (no sftcore)"
        storage.write_bytes(target, data)
    elif fmt == "onnx":
        data, exporter = _onnx(module, inputs, check, expected)
        info["exporter"] = exporter
        info["input_name"], info["output_name"] = "input", "logits"
        info["notes"] = (
            "onnxruntime.InferenceSession(file).run(None, {'input': x})[0] -> logits; the batch axis is dynamic"
        )
        storage.write_bytes(target, data)
    else:
        files = _safetensors(model, target, info, check, expected, force)
        for file, data in files:
            storage.write_bytes(file, data)
        written = [file for file, _ in files]
    return written


# --------------------------------------------------------------------------- shared
def _need(*packages: str) -> None:
    import importlib

    for name in packages:
        try:
            importlib.import_module(name)
        except ImportError:
            raise SftError(f"exporting this format needs the '{name}' package: {EXTRA}") from None


def _target(run_dir: Path, model_path: Path, fmt: str, out) -> Path:
    if out is not None:
        target = Path(out)
        if target.is_dir():
            raise SftError(f"--out '{target}' is a folder; give the path of the file to write")
        return target
    if run_dir.is_dir():
        folder = run_dir / "export"
    elif model_path.parent.name == rundir.CHECKPOINTS and rundir.is_run(model_path.parent.parent):
        folder = model_path.parent.parent / "export"  # checkpoints/<stage>.pt of a run
    else:
        folder = model_path.parent / "export"
    return folder / f"{model_path.stem}{FORMATS[fmt]}"


def _refuse_existing(paths, force: bool) -> None:
    for p in paths:
        storage.output_file(p, force, option=None, make_folder=True)


def _backbone_entry(path: Path):
    """The backbone entry the model was built with (recorded in the model file; older files: config.yaml)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - sftcore.load read it already; a legacy file may not map
        state = {}
    entry = state.get("backbone") if isinstance(state, dict) else None
    if isinstance(entry, dict):
        return entry
    run = path.parent.parent
    if rundir.is_run(run):
        return rundir.config(run).get("backbone")
    return None


def _plain(model):
    """The model as ``nn.Sequential(backbone, head)`` in eval mode, contiguous, on the CPU: no sftcore
    class around it (a TransferModel forward is head(backbone(x)) too)."""
    import torch
    from torch import nn

    tm = model.module
    seq = nn.Sequential(OrderedDict(backbone=copy.deepcopy(tm.backbone), head=copy.deepcopy(tm.head)))
    for sub in seq.modules():  # recording hooks (feature maps) are not part of the model
        sub._forward_hooks.clear()
        sub._forward_pre_hooks.clear()
    return seq.to("cpu", memory_format=torch.contiguous_format).float().eval()


def _inputs(model, n: int, seed: int):
    """``n`` uint8 random images of the run's image shape, prepared as its test images were."""
    import torch

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *model.image_shape), dtype=torch.uint8, generator=g)
    with torch.inference_mode():
        x = model.transform(list(images))
    return x.to("cpu").float().contiguous().clone()


def _compare(what: str, got, expected, hint: str) -> None:
    import torch

    got = torch.as_tensor(got).float()
    if got.shape != expected.shape:
        raise SftError(
            f"the {what} returns shape {tuple(got.shape)} for a batch of {expected.shape[0]}, not "
            f"{tuple(expected.shape)}; {hint}"
        )
    if not torch.allclose(got, expected, atol=ATOL, rtol=RTOL):
        diff = (got - expected).abs().max().item()
        raise SftError(f"the {what}'s logits differ from sftcore's by up to {diff:.3g}; {hint}")


def _failed(what: str, exc: BaseException, hint: str) -> SftError:
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return SftError(f"{what} failed ({type(exc).__name__}: {first[:200]}); {hint}")


# --------------------------------------------------------------------------- torchscript
def _torchscript(module, inputs, check, expected) -> bytes:
    import torch

    hint = (
        "the backbone probably has data-dependent control flow or Python-side state torch.jit.trace cannot "
        "record; export --format onnx or safetensors instead"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with torch.no_grad():
                traced = torch.jit.trace(module, (inputs,), check_trace=False)
            buffer = io.BytesIO()
            torch.jit.save(traced, buffer)
            loaded = torch.jit.load(io.BytesIO(buffer.getvalue()), map_location="cpu").eval()
            with torch.no_grad():
                got = loaded(check)
        except Exception as exc:  # noqa: BLE001 - tracing raises anything the model's code raises
            raise _failed("tracing the model with torch.jit.trace", exc, hint) from None
    tracer = [str(w.message).splitlines()[0] for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    _compare("traced model", got, expected, hint + (f" (tracer warning: {tracer[0][:160]})" if tracer else ""))
    return buffer.getvalue()


# --------------------------------------------------------------------------- onnx
def _onnx(module, inputs, check, expected) -> tuple[bytes, str]:
    import onnxruntime as ort
    import torch

    hint = "ONNX cannot express some operation of this backbone; export --format torchscript or safetensors instead"
    errors = []
    with tempfile.TemporaryDirectory() as tmp:
        for exporter in ("dynamo", "torchscript"):
            file = Path(tmp) / f"{exporter}.onnx"
            try:
                with warnings.catch_warnings(), torch.no_grad():
                    warnings.simplefilter("ignore")
                    if exporter == "dynamo":
                        _need("onnxscript")
                        batch = torch.export.Dim("batch", min=1)
                        program = torch.onnx.export(
                            module,
                            (inputs,),
                            dynamo=True,
                            input_names=["input"],
                            output_names=["logits"],
                            dynamic_shapes=({0: batch},),
                            external_data=False,
                            verbose=False,
                        )
                        assert program is not None  # dynamo=True returns the ONNXProgram
                        program.save(str(file), external_data=False)
                    else:
                        torch.onnx.export(
                            module,
                            (inputs,),
                            str(file),
                            dynamo=False,
                            input_names=["input"],
                            output_names=["logits"],
                            opset_version=17,
                            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                        )
                session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
                got = session.run(None, {session.get_inputs()[0].name: check.numpy()})[0]
                _compare("ONNX model (onnxruntime)", torch.from_numpy(got), expected, hint)
                return file.read_bytes(), f"torch.onnx.export(dynamo={exporter == 'dynamo'})"
            except SftError as exc:
                errors.append(exc)
            except Exception as exc:  # noqa: BLE001 - exporters and onnxruntime raise many kinds
                errors.append(_failed(f"ONNX export ({exporter} exporter)", exc, hint))
    raise errors[-1]


# --------------------------------------------------------------------------- safetensors
def _tensors(state: dict) -> dict:
    """Contiguous, unshared CPU copies (safetensors stores neither views nor shared storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def _safetensors(model, target: Path, info: dict, check, expected, force: bool) -> list[tuple[Path, bytes]]:
    """``(path, bytes)`` to write: the TransferModel state dict, and the native one if the backbone has it."""
    from safetensors.torch import save

    tm = model.module
    state = _tensors(tm.state_dict())
    files = [(target, save(state, metadata={"format": "pt"}))]
    info["notes"] = (
        "a sftcore TransferModel state dict: backbone.* (the backbone's features), head.* (a linear "
        "classifier); safetensors.torch.load_file(file)"
    )
    native = getattr(tm.spec, "native_state_dict", None)
    if native is None:
        info["native_notes"] = (
            "no state dict in the backbone library's own layout: the backbone plugin gives none "
            "for this model (e.g. a classifier that is not one linear layer)"
        )
        return files
    path = target.with_name(f"{target.name.removesuffix('.safetensors')}.native.safetensors")
    _refuse_existing([path], force)
    features, head = checkpoints.split_state(state)
    hint = "the backbone plugin's native_state_dict does not fit its model; export --format torchscript or onnx"
    try:
        native_state = _tensors(native(features, head))
    except Exception as exc:  # noqa: BLE001 - plugin code
        raise _failed("the backbone's native_state_dict", exc, hint) from None
    info["native_weights"] = path.name
    entry = info["backbone"] if isinstance(info["backbone"], dict) else {}
    if entry.get("name") == "timm":
        name, kwargs = _timm_model(entry)
        _check_timm(name, kwargs, len(model.classes), native_state, check, expected)
        info["timm_model"], info["timm_kwargs"] = name, kwargs
        info["native_notes"] = (
            "net = timm.create_model(timm_model, num_classes=len(classes), **timm_kwargs); "
            "net.load_state_dict(safetensors.torch.load_file(native_weights), strict=True)"
        )
    else:
        info["native_notes"] = (
            "the state dict of the backbone library's own model with this head as its classifier, "
            "as the backbone plugin maps it (not checked by sftcore: only timm's is)"
        )
    return files + [(path, save(native_state, metadata={"format": "pt"}))]


def _timm_model(entry: dict) -> tuple[str, dict]:
    """The ``timm.create_model`` name and keyword arguments (besides num_classes) the timm backbone used."""
    import timm

    name = str(entry.get("model", "resnet18"))
    kwargs = dict(entry.get("model_args") or {})
    if entry.get("in_chans") is not None:
        kwargs["in_chans"] = int(entry["in_chans"])
    if entry.get("img_size") is not None and "img_size" not in kwargs:
        cfg = timm.models.get_pretrained_cfg(name.split(".")[0])
        if getattr(cfg, "fixed_input_size", False):  # the backbone builds fixed-size models for img_size
            kwargs["img_size"] = int(entry["img_size"])
    return name, kwargs


def _check_timm(name: str, kwargs: dict, classes: int, state: dict, check, expected):
    import timm
    import torch

    hint = "the timm state dict does not reproduce the model; use the sftcore state dict (backbone.*, head.*)"
    try:
        net = timm.create_model(name, pretrained=False, num_classes=classes, **kwargs).eval()
        net.load_state_dict(state, strict=True)
        with torch.no_grad():
            got = net(check)
    except Exception as exc:  # noqa: BLE001 - timm raises many kinds
        raise _failed(f"loading the timm state dict into timm.create_model('{name}')", exc, hint) from None
    _compare(f"timm model '{name}'", got, expected, hint)
