"""Accuracy and loss of a model on a split, with what the verdict and predictions files need per example."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sftcore._config.schema import TTA  # test-time augmentation: none, or average with the flip
from sftcore._data.batches import Batches, BatchTransform
from sftcore._runtime import distributed
from sftcore._runtime.device import Performance

from .model import TransferModel


def evaluate(
    model: TransferModel, batches: Batches, transform: BatchTransform, perf: Performance, tta: str = "none"
) -> dict:
    """Accuracy and loss with deterministic transforms; ``correct`` is the per-example hit vector,
    ``predicted`` the per-example predicted class, ``top_k``/``top_k_probability`` the k = min(5, classes)
    most probable classes and their softmax probabilities, kept so that top-5 accuracy and calibration
    can be computed from predictions/<stage>.json after the run (top-k of the logits already computed:
    no second pass, and a fraction of the size of whole probability vectors).

    ``tta="flip"``: test-time augmentation; each image and its horizontal flip go through the model and
    their softmax probabilities are averaged; the loss, prediction and top-k come from the averaged
    probabilities. ``"none"`` (the default) is the plain single pass."""
    if tta not in TTA:
        raise ValueError(f"tta must be one of {', '.join(TTA)}, got {tta!r}")
    was_training = model.training
    model.eval()
    predicted, targets, top, top_p = [], [], [], []
    loss_sum, n = torch.zeros((), device=perf.device), 0
    with torch.inference_mode():
        for x, y in batches:
            with perf.autocast():
                logits = model(transform(x))
            logits = logits.float()
            if tta == "flip":  # log of the mean probability: normalised, so the code below reads it as logits
                with perf.autocast():
                    flipped = model(transform(x.flip(3))).float()
                logits = torch.logaddexp(logits.log_softmax(1), flipped.log_softmax(1)) - math.log(2.0)
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            predicted.append(logits.argmax(1))
            values, index = logits.topk(min(TOP_K, logits.shape[1]), dim=1)
            top.append(index)
            top_p.append((values - logits.logsumexp(1, keepdim=True)).exp())
            targets.append(y)
            n += len(y)
    model.train(was_training)
    parts: list[torch.Tensor] = [_joined(t) for t in (predicted, targets, top, top_p)]
    if distributed.active():  # each rank evaluated one contiguous share: put them back in order
        shares = distributed.all_gather_objects((*parts, loss_sum.item(), n))
        parts = [torch.cat([sh[i] for sh in shares]) for i in range(4)]
        loss_sum = torch.tensor(sum(sh[4] for sh in shares))
        n = sum(sh[5] for sh in shares)
    joined_predicted, joined_targets, top_k, top_k_p = parts
    correct = joined_predicted == joined_targets
    return {
        "accuracy": correct.float().mean().item() if n else float("nan"),
        "loss": loss_sum.item() / max(1, n),
        "correct": correct,
        "predicted": joined_predicted,
        "targets": joined_targets,
        "top_k": top_k,
        "top_k_probability": top_k_p,
    }


TOP_K = 5  # classes per example that evaluate() keeps with their probabilities


def _joined(tensors: list) -> torch.Tensor:
    """One CPU tensor from a batch list; an empty list (no examples on this rank) gives an empty long tensor."""
    return torch.cat(tensors).cpu() if tensors else torch.zeros(0, dtype=torch.long)
