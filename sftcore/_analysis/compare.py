"""Runs side by side: only the config keys that differ between them, next to what each run scored
(`sft compare --json`'s ``differing_keys`` and ``runs``; the table groups them: sftcore/_aggregate.py).

Keys are dotted paths with list indexes, as `--set` takes them (`finetune.regularizers.0.alpha`).
"""

from __future__ import annotations

from typing import Any

from sftcore._rundir import layout as rundir

_MISSING = object()


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": [1]}}`` -> ``{"a.b.0": 1}``; empty mappings and lists stay as leaves."""
    if isinstance(value, dict) and value:
        items = ((str(k), v) for k, v in value.items())
    elif isinstance(value, list) and value:
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in items:
        out.update(flatten(item, f"{prefix}.{key}" if prefix else key))
    return out


def _same(a, b) -> bool:
    # True == 1 in Python, but `flag: true` and `epochs: 1` are different settings
    return a is b or (a is not _MISSING and b is not _MISSING and (type(a) is bool) == (type(b) is bool) and a == b)


def compare(run_dirs) -> dict:
    """``{"differing_keys": [...], "runs": [{run, finished, config, test_accuracy, transfer_gain, ...}]}``;
    a run's ``config`` holds only the differing keys it has."""
    paths = [rundir.check(d) for d in run_dirs]
    flat = [flatten(rundir.config(p)) for p in paths]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    differing = [k for k in keys if any(not _same(flat[0].get(k, _MISSING), f.get(k, _MISSING)) for f in flat[1:])]
    runs = []
    for path, f in zip(paths, flat):
        summary = rundir.summary(path)
        s = summary or {}
        runs.append(
            {
                "run": str(path),
                "finished": summary is not None,
                "config": {k: f[k] for k in differing if k in f},
                "test_accuracy": {stage: (s.get(stage) or {}).get("test_accuracy") for stage in rundir.STAGES},
                "transfer_gain": s.get("transfer_gain"),
                "transfer_gain_ci95": s.get("transfer_gain_ci95"),
                "verdict": s.get("verdict"),
            }
        )
    return {"differing_keys": differing, "runs": runs}
