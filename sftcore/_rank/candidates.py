"""What a ``--candidate`` names, turned into a backbone entry: a run directory (its pretrained backbone: the
run's backbone entry with its ``checkpoints/pretrain.pt``), a weights file (the config's backbone with those
weights), a backbone name, or a backbone entry in YAML flow syntax. A candidate that names nothing usable is
kept with its one-line error, so that it does not stop the others."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftcore._fileio.yaml_reader import parse_yaml
from sftcore._plugins import components
from sftcore._rundir import checkpoints
from sftcore._rundir import layout as rundir
from sftcore.errors import SftError

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


@dataclass
class Candidate:
    """One candidate: ``given`` as the user wrote it, the backbone ``entry`` it stands for, or its ``error``."""

    given: str
    kind: str  # "backbone", "run" or "weights"
    entry: dict | None = None
    error: str | None = None


def parse(given: Any, config_backbone: dict) -> Candidate:
    """The candidate ``given`` stands for; ``config_backbone`` is the entry a bare weights file goes with."""
    text = given if isinstance(given, str) else _flow(given)
    try:
        if isinstance(given, dict):
            return Candidate(text, "backbone", components.entry(dict(given), "candidate"))
        if not isinstance(given, str) or not given.strip():
            raise SftError(f"a candidate must be a run directory, a weights file or a backbone entry, got {given!r}")
        path = Path(given)
        if path.is_dir():
            return Candidate(text, "run", _from_run(path))
        if path.is_file():
            return Candidate(text, "weights", with_weights(config_backbone, path))
        return Candidate(text, "backbone", _from_yaml(given))
    except SftError as exc:
        return Candidate(text, "backbone", None, str(exc))


def _flow(value: Any) -> str:
    """A mapping as the YAML flow syntax `--candidate` takes (what rank.json shows for it)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def with_weights(entry: Any, weights: Path) -> dict:
    """``entry`` loading ``weights`` instead of whatever it loaded (hub weights: ``pretrained`` is dropped)."""
    out = {k: v for k, v in components.entry(entry, "backbone").items() if k != "pretrained"}
    # absolute: the entry goes into rank.json and `--sweep`'s sweep.yaml, read from wherever they are run
    return {**out, "weights": str(Path(weights).resolve())}


def _from_run(path: Path) -> dict:
    """A finished run's pretrained backbone: its backbone entry plus its pretrain model file."""
    if not rundir.is_run(path):
        raise SftError(f"'{path}' is a folder but not a run directory (it has no {rundir.CONFIG})")
    _, model_file = checkpoints.paths(path, "pretrain")
    if model_file is None or not model_file.is_file():
        raise SftError(f"run '{path}' has no finished pretrain stage (no {model_file}); rank a run that pretrained")
    backbone = rundir.config(path).get("backbone")
    if backbone is None:
        raise SftError(f"run '{path}': its {rundir.CONFIG} names no backbone")
    return with_weights(backbone, model_file)


def _from_yaml(text: str) -> dict:
    """A backbone name or a ``{name: ..., options}`` entry in YAML flow syntax; a path that is not there is
    said to be missing rather than taken for a backbone name."""
    value = parse_yaml(text)
    if isinstance(value, str) and ("/" in value or "\\" in value or value.endswith(WEIGHT_SUFFIXES)):
        raise SftError(f"'{text}' not found (neither a run directory nor a weights file)")
    if not isinstance(value, (str, dict)):
        raise SftError(f"'{text}' is not a backbone entry: give a name or '{{name: ..., options}}'")
    return components.entry(value, "candidate")
