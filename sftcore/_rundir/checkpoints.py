"""The checkpoint files of a run, written and parsed here only.

Under an adapter, both files hold only the tensors the stage can change (what the adapter left trainable,
the head, every buffer) and ``frozen_base``: the sha256 of the pinned tensors they apply to, the frozen base
(``compact``). Reading one fills the base back from the model it is loaded into, after checking its hash
(``load_model``), so a LoRA checkpoint of a ViT is a few MB and resuming stays exact.

``checkpoints/<tag>-last.pt`` is a stage's progress: the state ``Stage.state_dict`` returns (model,
optimizer, schedule, RNGs, position, history, callbacks), rewritten after every epoch and on a stop.
``checkpoints/<tag>.pt`` is a finished stage's model file: MODEL_KEYS below, read by ``--resume``, by
``sft predict`` and by ``sftcore.api.read_checkpoint`` (a backbone starting from an earlier run).
"""

from __future__ import annotations

import hashlib
import weakref
from pathlib import Path
from typing import Any

from sftcore._fileio import storage
from sftcore._plugins.contracts import Checkpoint, pinned
from sftcore.errors import ConfigError

from . import layout

# what a finished stage's model file holds; the backbone entry, the run's seed and the backbone's plugin
# (name, distribution) let sftcore.load rebuild the model from the file alone (older files lack them)
MODEL_KEYS = (
    "stage",
    "tag",
    "seed",
    "model",
    "classes",
    "mean",
    "std",
    "image_shape",
    "input_shape",
    "config",
    "result",
    "backbone",
    "run_seed",
    "backbone_plugin",
)
# a model file of a stage under an adapter also holds frozen_base (older files and other stages lack it)
OPTIONAL_MODEL_KEYS = ("frozen_base",)
FROZEN_BASE = "frozen_base"
_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (pinned keys, sha256): computed once


def paths(run_dir: Path | None, tag: str, enabled: bool = True) -> tuple[Path | None, Path | None]:
    """``(progress, model file)`` of stage ``tag``; ``(None, None)`` without a run directory or checkpoints."""
    if run_dir is None or not enabled:
        return None, None
    return run_dir / layout.CHECKPOINTS / f"{tag}-last.pt", run_dir / layout.CHECKPOINTS / f"{tag}.pt"


def stage_files(run_dir: Path, stage: str) -> list[Path]:
    """Every checkpoint file of ``stage``, of every seed: its model and progress files (a config change that
    touches the stage removes them, so that it trains again)."""
    folder = run_dir / layout.CHECKPOINTS
    return [*folder.glob(f"{stage}.pt"), *folder.glob(f"{stage}-*.pt")]


def digest(named) -> str:
    """sha256 of named tensors' names, dtypes, shapes and bytes: the frozen weights a progress checkpoint leaves
    out, so that a resume checks that it rebuilt the same ones."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, tensor in named:
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# --------------------------------------------------------------------------- parameters left out
# Two kinds of tensors are left out of checkpoint files, both owned here: parameters a stage has never trained
# (progress files: ``frozen`` names them with their digest; a linear probe's progress is its head) and an
# adapter's pinned base (progress and model files: ``frozen_base`` holds its hash). Both are rebuilt by the run
# that reads the file, and checked to be the very tensors the file was saved against.
def left_out(params: dict, names: frozenset, record: dict | None = None) -> dict:
    """The record a progress file keeps of the never-trained parameters ``names`` of ``params`` (name ->
    tensor): their sorted names and digest; ``record``, when it names the same parameters, is reused (the
    digest of weights nothing has stepped does not change)."""
    if record is not None and frozenset(record["names"]) == names:
        return record
    return {"names": sorted(names), "digest": digest([(n, params[n]) for n in sorted(names)])}


def without(state: dict, names) -> dict:
    """A state dict without the tensors ``names``."""
    drop = set(names)
    return {k: v for k, v in state.items() if k not in drop}


def matches_left_out(params: dict, record: dict) -> bool:
    """Whether the parameters a progress file left out (``record``: its ``frozen``) are, bit for bit, the ones
    in ``params``: a resume rebuilt the same start of the stage."""
    names = [n for n in record["names"] if n in params]
    return len(names) == len(record["names"]) and digest([(n, params[n]) for n in names]) == record["digest"]


def refilled(state: dict, own: dict) -> dict:
    """A state dict made whole from ``own`` (the model's state dict): the tensors it left out, copied."""
    return {**{k: v.detach().clone() for k, v in own.items() if k not in state}, **state}


def save_progress(state: dict, path: Path, model=None) -> None:
    """A stage's progress; with ``model``, its frozen base (and the start snapshot's copy of it) left out."""
    if model is not None:
        state = compact(state, model)
    storage.save(state, path)


def save_model_file(path: Path, **parts) -> None:
    """A finished stage: every key of MODEL_KEYS, nothing else but OPTIONAL_MODEL_KEYS."""
    missing = [k for k in MODEL_KEYS if k not in parts]
    unknown = sorted(set(parts) - set(MODEL_KEYS) - set(OPTIONAL_MODEL_KEYS))
    if missing or unknown:
        raise ValueError(f"model file parts: missing {missing}, unknown {unknown}")
    storage.save(parts, path)


# --------------------------------------------------------------------------- the frozen base
def frozen_base(model) -> tuple[list[str], str]:
    """``(keys, sha256)`` of the parameters of ``model`` that an adapter pinned (``([], "")`` without any). The
    pinned tensors never change while the model lives (nothing steps them), so this is computed once per model."""
    import torch

    if model in _DIGESTS:
        return _DIGESTS[model]
    keep = pinned(model)
    params = [(n, p) for n, p in model.named_parameters(remove_duplicate=False) if id(p) in keep]
    h = hashlib.sha256()
    for name, p in sorted(params, key=lambda item: item[0]):
        t = p.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    found = ([n for n, _ in params], h.hexdigest() if params else "")
    _DIGESTS[model] = found
    return found


def compact(state: dict, model) -> dict:
    """``state`` (a progress file, or a model file's parts) without the pinned tensors of ``model`` in its
    ``model``, ``start_state`` and ``best`` copy, plus ``frozen_base``: their hash and count. Unchanged without
    an adapter."""
    keys, digest = frozen_base(model)
    if not keys:
        return state
    out = {**state, "model": without(state["model"], keys)}
    if out.get("start_state") is not None:
        out["start_state"] = without(out["start_state"], keys)
    if isinstance(out.get("best"), dict) and isinstance(out["best"].get("state"), dict):  # select: best's copy
        out["best"] = {**out["best"], "state": without(out["best"]["state"], keys)}
    out[FROZEN_BASE] = {"sha256": digest, "tensors": len(keys), **state.get(FROZEN_BASE, {})}
    return out


def model_bytes(model) -> int:
    """Bytes of the tensors a model file of ``model`` holds (its compact state under an adapter): summary.json's
    ``checkpoint_bytes``, the file's size less its few kB of metadata."""
    state = compact({"model": model.state_dict()}, model)["model"]
    return sum(t.numel() * t.element_size() for t in state.values())


def _filled(model, state: dict, path: Path, fix: str) -> dict:
    """A compact ``state`` made whole again from ``model``'s own frozen base, after checking it is the same base."""
    base = state.get(FROZEN_BASE)
    if not isinstance(base, dict):
        return state
    keys, digest = frozen_base(model)
    if digest != base.get("sha256"):
        got = f"sha256 {digest[:12]}" if digest else "no frozen base (no adapter)"
        raise ConfigError(
            f"checkpoint '{path}' holds only what its adapter trained, for a frozen base with sha256 "
            f"{str(base.get('sha256'))[:12]}; the model built here has {got}; {fix}"
        )
    own = model.state_dict()
    base_own = {k: own[k] for k in keys}
    out = {**state, "model": {**base_own, **state["model"]}}
    if out.get("start_state") is not None:
        out["start_state"] = refilled(out["start_state"], base_own)
    if isinstance(out.get("best"), dict) and isinstance(out["best"].get("state"), dict):
        out["best"] = {**out["best"], "state": refilled(out["best"]["state"], base_own)}
    return out


def load_run_file(path: Path, map_location) -> dict:
    """A progress or model file of this run, for ``--resume``; a damaged one is one line."""
    state = storage.load(
        path, "checkpoint", "delete it to redo that part of the run, or start a new run", map_location=map_location
    )
    if not isinstance(state, dict) or "model" not in state:
        raise ConfigError(
            f"checkpoint '{path}' is not a sftcore stage checkpoint; delete it to redo that part "
            "of the run, or start a new run"
        )
    return state


def load_model(model, state: dict, path: Path, fix: str | None = None) -> None:
    """The file's weights into ``model``; weights of another architecture are one line naming the difference. A
    compact file (``frozen_base``) is made whole in place from ``model``'s own base, once its hash matches."""
    fix = fix or "resume only with the run's own config.yaml, or start a new run"
    state.update(_filled(model, state, path, fix))
    # a progress file also leaves out what its stage never trained (Stage.state_dict), beside an adapter's base
    left_out = {n for n in (state.get("frozen") or {}).get("names", []) if n not in state["model"]}
    try:
        if left_out:
            missing, unexpected = (
                set(model.state_dict()) - set(state["model"]),
                set(state["model"]) - set(model.state_dict()),
            )
            if unexpected or missing != left_out:
                raise RuntimeError(
                    f"x\nMissing key(s): {sorted(missing - left_out)[:3]}, unexpected: {sorted(unexpected)[:3]}"
                )
        model.load_state_dict(state["model"], strict=not left_out)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = next((line.strip() for line in first[1:] if line.strip()), first[0] if first else "")
        raise ConfigError(
            f"checkpoint '{path}' is for another model than the run's config builds ({detail[:160]}); {fix}"
        ) from None


def read_model_file(path, what: str, fix: str) -> dict:
    """A finished stage's model file, checked for what a reader of it needs (model, classes, mean, std)."""
    state = storage.load(path, what, fix)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise ConfigError(f"{what} '{path}' is not a sftcore model file (no 'model' state dict); {fix}")
    problem = _model_file_problem(state)
    if problem:
        raise ConfigError(f"{what} '{path}' is damaged or was edited: {problem}; {fix}")
    return state


def _model_file_problem(state: dict) -> str | None:
    """What a reader of a model file would trip over later, checked here (a hand-edited file is one line)."""
    import math

    from sftcore._fileio.reader import max_image_pixels

    def numbers(key: str, positive: bool) -> bool:
        value = state[key]
        return (
            isinstance(value, list)
            and bool(value)
            and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive)
                for v in value
            )
        )

    def shape(key: str) -> bool:
        value = state[key]
        ok = isinstance(value, (list, tuple)) and len(value) == 3
        ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 65_536 for v in value)
        return ok and value[1] * value[2] <= max_image_pixels()  # new images are brought to this size

    classes = state.get("classes")
    if classes is not None and not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        return "classes must be a list of class names"
    for key, positive in (("mean", False), ("std", True)):
        if state.get(key) is not None and not numbers(key, positive):
            return f"{key} must be a list of finite numbers{' > 0' if positive else ''}"
    for key in ("image_shape", "input_shape"):
        if state.get(key) is not None and not shape(key):
            return f"{key} must be [channels, height, width], each from 1 to 65536, at most {max_image_pixels()} pixels"
    for key in ("seed", "run_seed"):
        if state.get(key) is not None and (isinstance(state[key], bool) or not isinstance(state[key], int)):
            return f"{key} must be an integer"
    return None


BACKBONE, HEAD = "backbone.", "head."  # a TransferModel's state dict: the two parts' prefixes


def split_state(model: dict) -> tuple[dict, dict]:
    """``(backbone, head)`` weights of a TransferModel state dict, without their prefixes."""

    def part(prefix: str) -> dict:
        return {k[len(prefix) :]: v for k, v in model.items() if isinstance(k, str) and k.startswith(prefix)}

    return part(BACKBONE), part(HEAD)


def as_checkpoint(raw: Any) -> Checkpoint | None:
    """The parts of a loaded sftcore model file; None when ``raw`` is not one (another library's file)."""
    if isinstance(raw, dict) and FROZEN_BASE in raw:
        raise ConfigError(
            "config: weights: a model file of a stage trained under an adapter holds only the adapter's tensors; "
            "export it merged (sft export --format safetensors) and start from that"
        )
    model = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(model, dict) or not any(isinstance(k, str) and k.startswith(BACKBONE) for k in model):
        return None
    backbone, head = split_state(model)
    return Checkpoint(backbone, head, raw.get("classes"), raw.get("mean"), raw.get("std"))
