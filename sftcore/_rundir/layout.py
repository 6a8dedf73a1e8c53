"""Reading a run directory back (`sft plot`, `predict`, `compare`): finished or not, with one-line errors.

Torch-free, so that `sft compare` over many runs starts fast.
"""

from __future__ import annotations

import json
from pathlib import Path

from sftcore.errors import SftError

STAGES = ("pretrain", "finetune", "baseline")


def check(run_dir) -> Path:
    """The run directory as a Path; a folder `sft run` did not write is a user error."""
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise SftError(f"'{path}' is a file, not a run directory; pass a folder written by `sft run`")
    if not path.is_dir():
        raise SftError(
            f"run directory '{path}' not found; pass a folder written by `sft run` (runs/<name>-<time> or its --out)"
        )
    if not (path / "config.yaml").is_file():
        raise SftError(f"'{path}' is not a run directory (no config.yaml); pass a folder written by `sft run`")
    return path


def config(run_dir: Path) -> dict:
    """``config.yaml`` as written: the resolved config of the run."""
    from sftcore._fileio.yaml_reader import load_yaml

    return load_yaml(Path(run_dir) / "config.yaml")


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise SftError(f"cannot read '{path}': {getattr(exc, 'strerror', None) or exc}") from None
    except json.JSONDecodeError as exc:
        raise SftError(
            f"'{path}' is not valid JSON (line {exc.lineno}: {exc.msg}); the run may have been killed while writing it"
        ) from None


def summary(run_dir: Path) -> dict | None:
    """``summary.json``; ``None`` while the run is unfinished (it is written last)."""
    path = Path(run_dir) / "summary.json"
    return _json(path) if path.is_file() else None


def predictions(run_dir: Path, stage: str) -> dict | None:
    """``predictions/<stage>.json`` (stage, classes, targets, predicted on the test split), if the stage wrote one."""
    path = Path(run_dir) / "predictions" / f"{stage}.json"
    return _json(path) if path.is_file() else None


def metrics(run_dir: Path) -> dict[str, list[dict]]:
    """``metrics.jsonl`` by stage, one record per epoch in epoch order.

    A resumed run may log an epoch again: the later record wins. A final line cut short by a
    killed run is skipped; a broken line before it is an error.
    """
    path = Path(run_dir) / "metrics.jsonl"
    try:
        text = path.read_text().splitlines() if path.is_file() else []
    except (OSError, UnicodeDecodeError) as exc:
        raise SftError(f"cannot read '{path}': {getattr(exc, 'strerror', None) or exc}") from None
    lines = [(i, line) for i, line in enumerate(text, 1) if line.strip()]
    by_stage: dict[str, dict[int, dict]] = {}
    for n, (i, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines) - 1:
                break
            raise SftError(f"'{path}' line {i} is not valid JSON; delete that line or rerun the stage") from None
        if isinstance(record, dict) and "stage" in record and "epoch" in record:
            by_stage.setdefault(str(record["stage"]), {})[record["epoch"]] = record
    order = sorted(by_stage, key=lambda s: (STAGES.index(s) if s in STAGES else len(STAGES), s))
    return {s: [by_stage[s][e] for e in sorted(by_stage[s])] for s in order}
