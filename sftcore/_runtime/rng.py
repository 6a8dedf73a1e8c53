"""Every random number generator a run or a plugin draws from, saved into and restored from checkpoints."""

from __future__ import annotations

import torch


def rng_state() -> dict:
    """Every RNG a plugin might draw from: torch (CPU and CUDA), Python's ``random`` and numpy's."""
    import random
    import sys

    state = {"torch": torch.get_rng_state(), "python": _plain_tuple(random.getstate())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    np = sys.modules.get("numpy")
    if np is not None:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state["numpy"] = {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype("int64")),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        }
    return state


def set_rng_state(state: dict) -> None:
    import random

    torch.set_rng_state(state["torch"].cpu())  # RNG states are CPU byte tensors wherever a checkpoint is loaded
    random.setstate(_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda"]])
    if "numpy" in state:
        import numpy as np

        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].cpu().numpy().astype("uint32"), n["pos"], n["has_gauss"], n["gauss"]))


def _plain_tuple(value):
    """Python's RNG state as nested lists (a checkpoint loaded with ``weights_only`` keeps them)."""
    return [_plain_tuple(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tuple(value):
    return tuple(_tuple(v) for v in value) if isinstance(value, list) else value
