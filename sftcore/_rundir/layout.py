"""The run directory's layout, owned here: every file name, what makes a folder a run, and reading a run
back (`sft plot`, `predict`, `compare`), finished or not, with one-line errors.

Torch-free, so that `sft compare` over many runs starts fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sftcore._plugins.contracts import STAGES
from sftcore.errors import ConfigError, SftError, show

CONFIG = "config.yaml"  # the resolved config the run trains with: a folder holding one is a run
SUMMARY = "summary.json"  # written last: a run without it is unfinished
METRICS = "metrics.jsonl"  # one line per epoch
PREDICTIONS = "predictions"  # predictions/<tag>.json: each stage's test predictions
CHECKPOINTS = "checkpoints"  # checkpoints/<tag>.pt (model files) and <tag>-last.pt (progress)
PLOTS = "plots"  # `sft plot`'s default output
LOCK = ".sft-lock"  # the writer's flock (sftcore._run.ownership)
MARKER = ".sftcore-run"  # sftcore made this folder: what --force may replace
CHANGES = "config-changes.jsonl"  # each --resume --allow-config-change
FAILED = "failed.json"  # a run that failed while training (a NaN loss): its error, beside what it trained
# what a run writes, the built-in callbacks' files included (a plugin's own files are its business):
# --force removes these and nothing else
RUN_FILES = (
    FAILED,
    CONFIG,
    SUMMARY,
    METRICS,
    CHECKPOINTS,
    PREDICTIONS,
    PLOTS,
    CHANGES,
    MARKER,
    "metrics.csv",
    "tensorboard",
    "mlflow-run.json",
)
SWEEP = "sweep.json"  # a sweep folder's state (sftcore._sweep)


OWN_FILES = (CONFIG, SUMMARY, METRICS, CHECKPOINTS, PREDICTIONS, PLOTS, CHANGES, MARKER, LOCK)  # the run's own


def check_run_file(value: Any, where: str) -> str:
    """A file a component writes into the run directory, as a user named it (a callback's ``path``): a relative
    path that stays inside the run directory and is none of the run's own files. Returns it; one line if not."""
    from pathlib import PurePosixPath

    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise ConfigError(f"{where} must be a file path relative to the run directory, got {show(value)}")
    parts = PurePosixPath(value.replace("\\", "/")).parts
    if value.startswith(("/", "\\")) or Path(value).is_absolute() or ".." in parts or not parts:
        raise ConfigError(
            f"{where} must stay inside the run directory (a relative path without '..'), got {show(value)}"
        )
    if value.endswith(("/", "\\")):
        raise ConfigError(f"{where} must name a file, not a folder, got {show(value)}")
    if parts[0] in OWN_FILES or parts[0] == ".":
        reserved = parts[0] if parts[0] != "." else value
        raise ConfigError(f"{where} must not be one of the run's own files ({reserved}), got {show(value)}")
    return value


def is_run(path) -> bool:
    """Whether ``path`` is a run directory: one that `sft run` wrote a config into."""
    return (Path(path) / CONFIG).is_file()


def made_by_sftcore(path) -> bool:
    """sftcore wrote this directory (what --force may replace): it has the marker, or is a run made before the
    marker existed."""
    path = Path(path)
    return (path / MARKER).is_file() or _legacy_run(path)


def _legacy_run(path: Path) -> bool:
    """A run from before the marker: sftcore's own keys in config.yaml and in summary.json or metrics.jsonl
    (other tools write files of those names too; their folders are never a run)."""
    import yaml

    try:
        cfg = yaml.safe_load((path / CONFIG).read_text())
        if not (isinstance(cfg, dict) and "backbone" in cfg and ("finetune" in cfg or "pretrain" in cfg)):
            return False
        if (path / SUMMARY).is_file():
            summary = json.loads((path / SUMMARY).read_text())
            return isinstance(summary, dict) and "transfer_gain" in summary
        first = (path / METRICS).read_text().splitlines()[:1]
        record = json.loads(first[0]) if first else {}
        return isinstance(record, dict) and "stage" in record and "train_loss" in record
    except (OSError, ValueError, yaml.YAMLError):
        return False


def predictions_file(run_dir, tag: str) -> Path:
    return Path(run_dir) / PREDICTIONS / f"{tag}.json"


def check(run_dir) -> Path:
    """The run directory as a Path; a folder `sft run` did not write is a user error."""
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise SftError(f"'{path}' is a file, not a run directory; pass a folder written by `sft run`")
    if not path.is_dir():
        raise SftError(
            f"run directory '{path}' not found; pass a folder written by `sft run` (runs/<name>-<time> or its --out)"
        )
    if not is_run(path):
        raise SftError(f"'{path}' is not a run directory (no {CONFIG}); pass a folder written by `sft run`")
    return path


def config(run_dir: Path) -> dict:
    """``config.yaml`` as written: the resolved config of the run."""
    from sftcore._fileio.yaml_reader import load_yaml

    return load_yaml(Path(run_dir) / CONFIG)


def _json(path: Path):
    from sftcore._fileio.reader import read_text

    text = read_text(path, "file")  # a regular file, UTF-8, bounded: else one line
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SftError(
            f"'{path}' is not valid JSON (line {exc.lineno}: {exc.msg}); the run may have been killed while writing it"
        ) from None


def summary(run_dir: Path) -> dict | None:
    """``summary.json``; ``None`` while the run is unfinished (it is written last)."""
    path = Path(run_dir) / SUMMARY
    return _json(path) if path.is_file() else None


def predictions(run_dir: Path, stage: str) -> dict | None:
    """``predictions/<stage>.json`` (stage, classes, targets, predicted on the test split), if the stage wrote one."""
    path = predictions_file(run_dir, stage)
    return _json(path) if path.is_file() else None


def metrics(run_dir: Path) -> dict[str, list[dict]]:
    """``metrics.jsonl`` by stage, one record per epoch in epoch order.

    A resumed run may log an epoch again: the later record wins. A final line cut short by a
    killed run is skipped; a broken line before it is an error.
    """
    path = Path(run_dir) / METRICS
    from sftcore._fileio.reader import MAX_FILE_BYTES, read_text

    text = read_text(path, "metrics log", limit=MAX_FILE_BYTES).splitlines() if path.exists() else []
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
