"""Ranking candidate backbones: each candidate's features of the finetune stage's few-label training split
(the images `sft run` finetunes on for its first seed, through the Pipeline's own data and transforms),
every chosen score on them, one table and rank.json / rank.csv. A bad candidate is one error line in the
table and the files; it never stops the others."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftcore._config import resolve as cfgmod
from sftcore._config.schema import RunConfig
from sftcore._fileio import storage
from sftcore._plugins import components
from sftcore._plugins.contracts import suggest
from sftcore._plugins.manager import get_registry
from sftcore._runtime import held_warnings
from sftcore.errors import ConfigError, SftError

from .candidates import Candidate, parse

# the keys every row of rank.json carries (null where not computed), in this order
SCORE_KEYS = ("logme", "leep", "nce", "hscore", "ncm_accuracy", "logistic_accuracy")
DEFAULT_BY = "logme"
JSON, CSV, SWEEP = "rank.json", "rank.csv", "sweep.yaml"
MAX_TOP = 100


@dataclass
class Plan:
    """Everything checked before any candidate is built: the config, the scores, the order, the files."""

    raw: dict
    config: RunConfig
    candidates: list[Candidate]
    scores: dict[str, Any]  # name -> the built Score
    by: str
    out: Path
    files: dict[str, Path] = field(default_factory=dict)


def rank(
    config=None,
    candidates: Sequence[Any] = (),
    *,
    overrides: Sequence[str] = (),
    scores: Sequence[str] | str | None = None,
    by: str = DEFAULT_BY,
    out=None,
    force: bool = False,
    seed: int | None = None,
    echo: Callable[[str], None] | None = None,
    top: int | None = None,
) -> dict:
    """Score every candidate on the config's finetune data; write rank.json and rank.csv into ``out``. With
    ``top``, also a sweep file (``sweep_file`` in the result) that finetunes the ``top`` best over the seeds."""
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= MAX_TOP):
        raise ConfigError(f"--top must be a whole number from 1 to {MAX_TOP}, got {top!r}")
    plan = _plan(config, candidates, overrides, scores, by, out, force, seed, top is not None)
    held_warnings.release()  # the input is checked: what a library warns about from here on is news
    rows = []
    for i, cand in enumerate(plan.candidates, 1):
        row = measure(plan, cand)
        _say(echo, f"rank: {i}/{len(plan.candidates)} {cand.given}: " + (row["error"] or _row_text(row)))
        rows.append(row)
    result = {
        "by": plan.by,
        "scores": list(plan.scores),
        "seed": plan.config.seed_list[0],
        "target": _target(plan.config, rows),
        "rows": order(rows, plan.by),
    }
    _write(plan, result)
    if top is None:
        return {**result, "out": str(plan.out)}
    spec = sweep_spec(plan, result, top)
    import yaml

    storage.write_text(plan.files[SWEEP], yaml.safe_dump(spec, sort_keys=False))
    return {**result, "out": str(plan.out), "sweep_file": str(plan.files[SWEEP])}


def sweep_spec(plan: Plan, result: dict, top: int) -> dict:
    """`sft sweep`'s file for the ``top`` best candidates: the config without its pretraining (each candidate
    is already the backbone to finetune) and one cell per candidate's backbone entry, over the config's seeds,
    so that the ranking is checked by finetuning."""
    chosen = [r for r in result["rows"] if r["error"] is None and r.get(plan.by) is not None][:top]
    if not chosen:
        raise SftError(f"no candidate has a {plan.by} score, so there is nothing to finetune; see {plan.out}")
    base = {k: v for k, v in plan.raw.items() if k not in ("pretrain", "rank")}
    return {
        "name": f"{plan.config.name}-rank-top{len(chosen)}",
        "base": {**base, "pretrain": None},
        "grid": {"backbone": [r["backbone"] for r in chosen]},
    }


def _say(echo, text: str) -> None:
    if echo is not None:
        echo(text)


def _row_text(row: dict) -> str:
    from sftcore._data.stage import shapes_text

    shapes = shapes_text(row) if row.get("image_shape") else ""
    return f"{row['examples']} examples, {row['feature_dim']} features" + (f"; {shapes}" if shapes else "")


def _plan(config, candidates, overrides, scores, by, out, force: bool, seed: int | None, sweep: bool = False) -> Plan:
    """The user's mistakes, each one line, before any work: the config, the scores, ``by``, the output files."""
    registry = get_registry()
    extra = [f"seed={seed}", "seeds=1"] if seed is not None else []
    raw = cfgmod.load(config, [*overrides, *extra])
    cfg = RunConfig.of(cfgmod.resolve(raw, registry))
    if cfg.finetune is None:
        raise ConfigError(
            "config: sft rank needs a finetune stage: its dataset is the target the candidates are scored on"
        )
    candidates = list(candidates or ()) or list(cfg.rank)  # --candidate, else the config's rank: list
    if not candidates:
        raise ConfigError(
            "no candidates: pass --candidate RUN_DIR | WEIGHTS_FILE | '{name: ..., options}' (repeatable), "
            "or list them under rank: in the config"
        )
    chosen = score_names(scores, registry)
    if by not in chosen:
        raise ConfigError(f"--by {by}: not among the scores computed ({', '.join(chosen)}){suggest(by, chosen)}")
    built = {name: components.build(registry, "scores", {"name": name}, f"scores[{name}]") for name in chosen}
    where = Path(out) if out is not None else _new_folder(cfg.name)
    if where.exists() and not where.is_dir():
        raise ConfigError(f"--out '{where}' is a file; pass a directory path")
    names = (JSON, CSV, SWEEP) if sweep else (JSON, CSV)
    files = {name: storage.output_file(where / name, force, None, make_folder=True) for name in names}
    parsed = [parse(c, cfg.backbone.entry()) for c in candidates]
    return Plan(raw, cfg, parsed, built, by, where, files)


def score_names(scores: Sequence[str] | str | None, registry) -> list[str]:
    """The scores to compute: ``a,b`` or a list, each registered; default every registered score."""
    known = [c.name for c in registry.list("scores")["scores"]]
    if scores is None:
        return sorted(known, key=lambda n: (SCORE_KEYS.index(n) if n in SCORE_KEYS else len(SCORE_KEYS), n))
    names = [s.strip() for s in scores.split(",")] if isinstance(scores, str) else [str(s).strip() for s in scores]
    names = list(dict.fromkeys(n for n in names if n))
    if not names:
        raise ConfigError("--scores names no score; give e.g. --scores logme,leep (see `sft list scores`)")
    for name in names:
        if name not in known:
            raise ConfigError(f"--scores: unknown score '{name}'{suggest(name, known)}; available: {', '.join(known)}")
    return names


def _new_folder(name: str) -> Path:
    """``runs/<name>-rank-<timestamp>``, as `sft run` names its run directories."""
    from sftcore._run.runner import new_run_path

    return new_run_path(f"{name}-rank")


# ---------------------------------------------------------------------------------------------- one candidate
def _blank(cand: Candidate) -> dict:
    return {
        "candidate": cand.given,
        "kind": cand.kind,
        "backbone": cand.entry,
        "rank": None,
        "examples": None,
        "feature_dim": None,
        "source_head": False,
        "image_shape": None,
        "input_shape": None,
        **{key: None for key in SCORE_KEYS},
        "error": cand.error,
        "score_errors": {},
    }


def measure(plan: Plan, cand: Candidate) -> dict:
    """``cand``'s row: its scores, or its one-line error (anything the candidate raises stays in its row)."""
    row = _blank(cand)
    if cand.error is not None:
        return row
    try:
        features, labels, probs, shapes = _features(plan, cand)
    except SftError as exc:
        row["error"] = str(exc)
        return row
    except Exception as exc:  # a plugin backbone that fails in its own way is still one candidate
        row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        return row
    row.update(examples=int(features.shape[0]), feature_dim=int(features.shape[1]), source_head=probs is not None,
               **shapes)  # fmt: skip
    for name, score in plan.scores.items():
        row[name] = _score(name, score, features, labels, probs, row["score_errors"])
    return row


def _features(plan: Plan, cand: Candidate):
    """Features and labels of the finetune stage's training split for the run's first seed, and the source
    head's class probabilities on them (None without a source head)."""
    from sftcore._run.pipeline import Pipeline

    cfg = cfgmod.resolve({**plan.raw, "backbone": cand.entry}, get_registry())
    pipe = Pipeline(cfg, None, False, None)
    backbone = pipe.build_backbone()
    seed = pipe.config.seed_list[0]
    data = pipe.stage_data("finetune", backbone, seed)
    features, labels, shapes = pipe.stage_features("finetune", backbone, data, seed)
    if features.ndim != 2:
        raise SftError(
            f"the backbone's features are {features.ndim}-D {list(features.shape)}, not [examples, features]; "
            "a score needs one vector per image (pool the features in the backbone)"
        )
    return features.cpu(), labels.cpu(), _source_probs(backbone.head, features), shapes


def _source_probs(head, features):
    """Softmax of the backbone's own source head on the features: what LEEP and NCE read."""
    import torch

    if head is None:
        return None
    try:
        with torch.inference_mode():
            head = head.to(features.device).eval()
            return torch.softmax(head(features).float(), dim=1).cpu()
    except RuntimeError:  # a head that does not take these features is no source classifier for them
        return None


def _score(name: str, score, features, labels, probs, errors: dict) -> float | None:
    """One score, or None: unavailable (no source head; or the score says why, its line kept in ``errors``) or
    failed (its line kept too)."""
    if getattr(score, "needs_source", False) and probs is None:
        return None
    try:
        value = float(score(features, labels, probs if score.needs_source else None))
    except SftError as exc:  # ScoreUnavailable among them: hscore on fewer examples than dimensions
        errors[name] = str(exc)
        return None
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------- the results
def order(rows: list[dict], by: str) -> list[dict]:
    """Best first by ``by`` (higher is better); rows without it, then failed candidates, last, in the order
    given; ``rank`` numbers the rows that have the score."""

    def key(row: dict):
        value = row.get(by)
        return (row["error"] is None, value is not None, value if value is not None else 0.0)

    ranked = sorted(rows, key=key, reverse=True)
    for i, row in enumerate(ranked, 1):
        row["rank"] = i if row.get(by) is not None else None
    return ranked


def _target(config: RunConfig, rows: list[dict]) -> dict:
    ds = config.stage("finetune").dataset
    examples = next((r["examples"] for r in rows if r["examples"] is not None), None)
    return {
        "stage": "finetune",
        "dataset": ds.name if ds is not None else None,
        "labels_per_class": ds.labels_per_class if ds is not None else None,
        "fraction": ds.fraction if ds is not None else None,
        "train_examples": ds.train_examples if ds is not None else None,
        "examples": examples,
    }


def _cell(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def table(result: dict) -> str:
    """The ranking as text: one line per candidate, best first, ``n/a`` for a score not available."""
    scores, by = result["scores"], result["by"]
    names = [r["candidate"] if len(r["candidate"]) <= 48 else r["candidate"][:45] + "..." for r in result["rows"]]
    width = max([len("candidate"), *map(len, names)])
    target = result["target"]
    lines = [
        f"ranked by {by} (higher is better) on {target['dataset']}'s finetune training split: "
        f"{target['examples'] if target['examples'] is not None else '?'} examples, seed {result['seed']}",
        f"{'rank':>4}  {'candidate':<{width}}  " + "  ".join(f"{s:>{max(len(s), 9)}}" for s in scores),
    ]
    for name, row in zip(names, result["rows"]):
        rank = str(row["rank"]) if row["rank"] is not None else "-"
        if row["error"] is not None:
            lines.append(f"{rank:>4}  {name:<{width}}  error: {row['error']}")
            continue
        cells = "  ".join(f"{_cell(row.get(s)):>{max(len(s), 9)}}" for s in scores)
        lines.append(f"{rank:>4}  {name:<{width}}  {cells}")
    return "\n".join(lines) + "\n"


def csv_text(result: dict) -> str:
    columns = ["rank", "candidate", *dict.fromkeys([*SCORE_KEYS, *result["scores"]]), "examples", "error"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in result["rows"]:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    return buffer.getvalue()


def _write(plan: Plan, result: dict) -> None:
    import json

    storage.make_dir(plan.out)
    storage.write_text(plan.files[JSON], json.dumps(result, indent=2, default=str) + "\n")
    storage.write_text(plan.files[CSV], csv_text(result))
