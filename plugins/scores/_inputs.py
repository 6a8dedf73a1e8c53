"""The inputs every built-in score takes, checked once with one-line errors and brought to float64 on the CPU
(the references compute in float64; CPU because some accelerators have no float64)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sftcore.errors import ScoreUnavailable, SftError

SUM_TOLERANCE = 1e-3  # how far a row of source_probs may sum from 1 (float32 softmax over many classes)


@dataclass(frozen=True)
class Inputs:
    features: torch.Tensor  # float64 [N, D]
    labels: torch.Tensor  # int64 [N]: the distinct labels renumbered 0..classes-1, in their order
    classes: int
    source_probs: torch.Tensor | None  # float64 [N, source classes], only for a score that needs them


def _tensor(name: str, what: str, value: Any, ndim: int, shape: str) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise SftError(f"score '{name}': {what} must be a tensor {shape}, got {type(value).__name__}") from None
    if tensor.ndim != ndim:
        raise SftError(f"score '{name}': {what} must be {ndim}-D {shape}, got shape {list(tensor.shape)}")
    return tensor.detach().cpu()


def _floats(name: str, what: str, value: Any, shape: str) -> torch.Tensor:
    tensor = _tensor(name, what, value, 2, shape)
    if not tensor.is_floating_point():
        raise SftError(f"score '{name}': {what} must be floating point, got {tensor.dtype}")
    tensor = tensor.to(torch.float64)
    if not bool(torch.isfinite(tensor).all()):
        raise SftError(f"score '{name}': {what} hold NaN or infinite values")
    return tensor


def _labels(name: str, value: Any, n: int) -> tuple[torch.Tensor, int]:
    labels = _tensor(name, "labels", value, 1, "[N]")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise SftError(f"score '{name}': labels must be integer class indices, got {labels.dtype}")
    if labels.shape[0] != n:
        raise SftError(f"score '{name}': {labels.shape[0]} labels for {n} feature rows")
    if n and int(labels.min()) < 0:
        raise SftError(f"score '{name}': labels must be class indices >= 0, got {int(labels.min())}")
    distinct, renumbered = torch.unique(labels.to(torch.int64), return_inverse=True)
    if distinct.numel() < 2:
        raise SftError(f"score '{name}': the labels hold {distinct.numel()} class; a score needs at least 2")
    return renumbered, int(distinct.numel())


def _probs(name: str, value: Any, n: int) -> torch.Tensor:
    if value is None:
        raise ScoreUnavailable(f"score '{name}' needs the source classifier's probabilities (source_probs)")
    probs = _floats(name, "source_probs", value, "[N, source classes]")
    if probs.shape[0] != n:
        raise SftError(f"score '{name}': source_probs has {probs.shape[0]} rows for {n} feature rows")
    if bool((probs < 0).any()) or float((probs.sum(1) - 1).abs().max()) > SUM_TOLERANCE:
        raise SftError(f"score '{name}': source_probs must be probabilities (rows >= 0 summing to 1): softmax(logits)")
    return probs


def prepare(name: str, features: Any, labels: Any, source_probs: Any = None, *, needs_source: bool = False) -> Inputs:
    """The checked inputs of score ``name``; ``source_probs`` is read only when the score ``needs_source``.

    Labels are renumbered to the classes present, so a class with no example counts for nothing."""
    f = _floats(name, "features", features, "[N, D]")
    if f.shape[0] < 2:
        raise SftError(f"score '{name}': needs at least 2 examples, got {f.shape[0]}")
    y, classes = _labels(name, labels, f.shape[0])
    probs = _probs(name, source_probs, f.shape[0]) if needs_source else None
    return Inputs(f, y, classes, probs)
