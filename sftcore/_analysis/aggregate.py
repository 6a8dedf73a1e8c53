"""Runs grouped by what was varied and aggregated over seeds: the table that answers a sweep's question.

Every accuracy, gain, difference and interval here is in percent points (summary.json's
``test_accuracy`` times 100; its ``transfer_gain`` is already in points), as `sft compare` and the
verdict print them. Torch-free, like `sft compare`.

A row (cell) is one combination of the varied config keys; runs that differ only in the keys that
name, seed or place a run (``IDENTITY_KEYS``, the loggers' ``LOG_OPTIONS``) share a row and pool their
seeds. A component that differs by name (``finetune.head``, a regularizer list of another length) is
one column in a compact form, ``l2_sp(alpha=0.1)``, rather than one column per option.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

from sftcore._rundir import layout as rundir
from sftcore.errors import ConfigError

from .compare import _MISSING, _same, flatten
from .report import t_interval

# top-level keys that never make a cell: they name, seed or store a run (a cached pretraining is the same one)
IDENTITY_KEYS = ("name", "seed", "seeds", "checkpoints", "pretrain_cache")
LOG_OPTIONS = ("path", "log_dir", "tracking_uri", "experiment", "run_name")  # callbacks.N.<option>: where logs go
MAX_CELL = 28  # characters of a key's value in the table
STAT_NAMES = ("finetune", "baseline", "gain")


def identity_key(key: str) -> bool:
    """A flattened key that names, seeds or places a run instead of changing what it learns."""
    parts = key.split(".")
    return parts[0] in IDENTITY_KEYS or (parts[0] == "callbacks" and len(parts) == 3 and parts[2] in LOG_OPTIONS)


# --------------------------------------------------------------------------- reading runs
def sweep_of(path) -> Path | None:
    """The sweep directory a cell ``SWEEP/cells/<cell>`` belongs to (sweep.json, or sweep.yaml while the
    sweep runs), else None."""
    path = Path(path)
    sweep = path.parent.parent
    marked = (sweep / rundir.SWEEP).is_file() or (sweep / "sweep.yaml").is_file()
    return sweep if path.parent.name == "cells" and marked else None


def expand_sweeps(paths) -> list[Path]:
    """The paths, each sweep directory (a folder with sweep.json) replaced by its cells in name order: the
    folders there, and the cells sweep.json lists whose folder is gone (reported, never dropped silently)."""
    out: list[Path] = []
    for path in map(Path, paths):
        if (path / rundir.SWEEP).is_file():
            cells = {c for c in (path / "cells").glob("*") if c.is_dir()}
            cells |= {path / "cells" / name for name in _listed_cells(path)}
            out.extend(sorted(cells))
        else:
            out.append(path)
    return out


def _listed_cells(sweep: Path) -> list[str]:
    """The cell names sweep.json lists (none when it cannot be read: the folders alone then)."""
    try:
        cells = json.loads((sweep / rundir.SWEEP).read_text()).get("cells")
    except (OSError, ValueError, AttributeError):
        return []
    names = [c.get("name") for c in cells if isinstance(c, dict)] if isinstance(cells, list) else []
    return [n for n in names if isinstance(n, str) and n and "/" not in n and n not in (".", "..")]


def sweep_settings(paths) -> dict:
    """``{"reference", "varied"}`` from sweep.json when ``paths`` is one sweep directory: `sft compare SWEEP_DIR`
    and `sft plot SWEEP_DIR` show the table the sweep printed (its grid keys, its reference)."""
    paths = list(paths)
    try:
        data = json.loads((Path(paths[0]) / rundir.SWEEP).read_text()) if len(paths) == 1 else {}
    except (OSError, ValueError):
        data = {}
    data = data if isinstance(data, dict) else {}
    reference, varied = data.get("reference"), data.get("varied_keys")
    ok = isinstance(varied, list) and varied and all(isinstance(k, str) for k in varied)
    return {
        "reference": reference if isinstance(reference, str) and reference else None,
        "varied": varied if ok else None,
    }


def _sweep_status(path: Path) -> tuple[str | None, str | None]:
    """The cell's status and error line from its sweep.json, when it has one (never required)."""
    sweep = sweep_of(path)
    if sweep is None:
        return None, None
    try:
        cells = json.loads((sweep / rundir.SWEEP).read_text()).get("cells")
    except (OSError, ValueError, AttributeError):  # no sweep.json yet, or one being rewritten
        return None, None
    for cell in cells if isinstance(cells, list) else []:
        if isinstance(cell, dict) and path.name in (cell.get("name"), Path(str(cell.get("run_dir") or "")).name):
            status, error = cell.get("status"), cell.get("error")
            return (str(status) if status else None), (str(error) if error else None)
    return None, None


def _number(x) -> float | None:
    ok = isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    return float(x) if ok else None


def _points(stage) -> float | None:
    acc = _number(stage.get("test_accuracy")) if isinstance(stage, dict) else None
    return None if acc is None else 100.0 * acc


def per_seed(summary: dict, run: str) -> list[dict]:
    """``[{seed, run, finetune, baseline, gain}]`` in points from summary.json (one entry per seed; a summary
    written before ``per_seed`` existed counts as its one seed)."""
    entries = summary.get("per_seed")
    if not isinstance(entries, list):
        entries = [
            {
                "seed": summary.get("seed"),
                "finetune": summary.get("finetune"),
                "baseline": summary.get("baseline"),
                "transfer_gain": summary.get("transfer_gain"),
            }
        ]
    out = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        f, b = _points(entry.get("finetune")), _points(entry.get("baseline"))
        gain = _number(entry.get("transfer_gain")) if f is not None and b is not None else None
        if gain is None and f is not None and b is not None:
            gain = f - b
        seed = entry.get("seed")
        out.append(
            {
                "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
                "run": run,
                "finetune": f,
                "baseline": b,
                "gain": gain,
            }
        )
    return out


def _load(paths: list[Path]) -> tuple[list[dict], list[dict]]:
    """Finished runs (run, config, per_seed) and the failed or unfinished ones, each path once."""
    runs, failed, seen = [], [], set()
    for path in paths:
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        status, error = _sweep_status(path)
        if sweep_of(path) is not None and not rundir.is_run(path):
            if not path.exists():
                status, error = "missing", "its folder is gone (deleted after the sweep ran it)"
            failed.append(
                {
                    "run": str(path),
                    "status": status if status in ("failed", "missing") else "unfinished",
                    "error": error,
                }
            )
            continue
        path = rundir.check(path)
        config = rundir.config(path)  # read even for an unfinished run: a broken config.yaml is said, not skipped
        summary = rundir.summary(path)
        if not isinstance(summary, dict):
            failed.append(
                {"run": str(path), "status": "failed" if status == "failed" else "unfinished", "error": error}
            )
            continue
        runs.append({"run": str(path), "config": config, "per_seed": per_seed(summary, str(path))})
    return runs, failed


# --------------------------------------------------------------------------- columns
def get(config, key: str):
    """The value at a dotted key (list indexes as numbers; "" is the whole config), or ``_MISSING``."""
    node = config
    for part in key.split(".") if key else ():
        if isinstance(node, dict):
            match = [v for k, v in node.items() if str(k) == part]
            node = match[0] if match else _MISSING
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _canon(node) -> str:
    return "\0missing" if node is _MISSING else json.dumps(node, sort_keys=True, default=str)


def _identity(node) -> tuple:
    """What makes two values of one key different components: absence, kind, list length, component name."""
    if isinstance(node, dict):
        return ("dict", _canon(node.get("name", _MISSING)))
    if isinstance(node, list):
        return ("list", len(node))
    return ("missing",) if node is _MISSING else ("leaf",)


def _column_of(key: str, configs: list) -> str:
    """The shortest prefix of ``key`` where the runs hold different components; else the key itself."""
    parts = key.split(".")
    for i in range(1, len(parts)):
        prefix = ".".join(parts[:i])
        if len({_identity(get(c, prefix)) for c in configs}) > 1:
            return prefix
    return key


def _under(key: str, column: str) -> bool:
    return key == column or key.startswith(column + ".")


def columns(configs: list, varied=None) -> tuple[list[str], int, list[str]]:
    """``(varied columns, how many constant keys are hidden, differing keys pooled into rows)``."""
    flats = [flatten(c) for c in configs]
    keys = list(dict.fromkeys(k for f in flats for k in f if not identity_key(k)))
    differing = [k for k in keys if any(not _same(flats[0].get(k, _MISSING), f.get(k, _MISSING)) for f in flats[1:])]
    if varied is None:
        cols = list(dict.fromkeys(_column_of(k, configs) for k in differing))
    else:
        cols = [str(k) for k in varied]
        for key in cols:
            if configs and all(get(c, key) is _MISSING for c in configs):
                raise ConfigError(
                    f"varied key '{key}' is in no run's config.yaml; use dotted keys as --set takes "
                    "them, e.g. finetune.regularizers.0.alpha"
                )
    constant = sum(1 for k in keys if k not in differing and not any(_under(k, c) for c in cols))
    pooled = [k for k in differing if not any(_under(k, c) for c in cols)]
    return cols, constant, pooled


def short_names(cols: list[str]) -> dict[str, str]:
    """Each column's last path part (a list index keeps the part before it); where two collide, the first part
    and the last; where those collide too, the full key."""

    def base(key: str) -> str:
        parts = key.split(".")
        return ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]

    def unique(names: dict, c: str) -> bool:
        return sum(n == names[c] for n in names.values()) == 1

    first = {c: base(c) for c in cols}
    second = {c: f"{c.split('.')[0]}.{first[c]}" if "." in c else c for c in cols}
    return {c: first[c] if unique(first, c) else second[c] if unique(second, c) else c for c in cols}


# --------------------------------------------------------------------------- compact values
def _leaf(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _join(at: str, key) -> str:
    return f"{at}.{key}" if at else str(key)


def constant_options(nodes: list) -> set[str]:
    """Relative keys with one value wherever their component (same place, same name) is, in two cells or
    more: left out of the compact form (``lp_ft`` for ``lp_ft(probe_epochs=10)`` when every lp_ft has 10; a
    component in one cell keeps its options)."""
    present = [n for n in nodes if isinstance(n, (dict, list))]  # one node per cell
    flats = [flatten(n) for n in present]
    hidden = set()
    for key in {k for f in flats for k in f}:
        parent = key.rpartition(".")[0]
        having = [(f[key], _identity(get(n, parent))) for n, f in zip(present, flats) if key in f]
        kinds = {kind for _, kind in having}
        parents = sum(1 for n in present if _identity(get(n, parent)) in kinds)
        if 1 < len(having) == parents and all(_same(having[0][0], v) for v, _ in having[1:]):
            hidden.add(key)
    return hidden


def compact(node, hidden=frozenset(), at: str = "") -> str:
    """``l2_sp(alpha=0.1)``, ``[]``, ``[l2_sp(alpha=0.1), l2]``: a component by name with the options not in
    ``hidden``."""
    if node is _MISSING:
        return "-"
    if isinstance(node, dict):
        opts = []
        for key, value in node.items():
            where = _join(at, key)
            if key == "name" or all(k in hidden for k in flatten(value, where)):
                continue
            opts.append(f"{key}={compact(value, hidden, where)}")
        name = node.get("name")
        if isinstance(name, str):
            return f"{name}({', '.join(opts)})" if opts else name
        return "{" + ", ".join(opts or (["…"] if node else [])) + "}"  # {…}: set, all its options constant
    if isinstance(node, list):
        return "[" + ", ".join(compact(v, hidden, _join(at, i)) for i, v in enumerate(node)) + "]"
    return _leaf(node)


# --------------------------------------------------------------------------- statistics (points)
def _r(x):
    return None if x is None else round(x, 4)


def interval(values: list[float]) -> float | None:
    """95% half-width of the mean over seeds: the verdict's t-interval; None below two values."""
    return t_interval(values)


def spread(values: list[float], with_interval: bool = False) -> dict:
    """``{mean, sd, n}`` (and ``ci95``): sd needs two values, the mean one."""
    out = {
        "mean": _r(statistics.fmean(values)) if values else None,
        "sd": _r(statistics.stdev(values)) if len(values) > 1 else None,
        "n": len(values),
    }
    if with_interval:
        out["ci95"] = _r(interval(values))
    return out


def _by_seed(row: dict) -> dict[int, float]:
    """Finetune accuracy per seed (the mean where runs of one cell repeat a seed)."""
    values: dict[int, list[float]] = {}
    for m in row["per_seed"]:
        if m["seed"] is not None and m["finetune"] is not None:
            values.setdefault(m["seed"], []).append(m["finetune"])
    return {seed: statistics.fmean(v) for seed, v in values.items()}


def versus(row: dict, ref: dict) -> dict:
    """The row's finetune accuracy minus the reference's, paired by seed; ``better`` when the 95% interval
    of the difference excludes 0 (False: worse), None when it does not or there is no interval."""
    mine, theirs = _by_seed(row), _by_seed(ref)
    diffs = [mine[s] - theirs[s] for s in sorted(set(mine) & set(theirs))]
    half = interval(diffs)
    mean = statistics.fmean(diffs) if diffs else None
    better = None if half is None or mean is None or abs(mean) <= half else mean > 0  # a half implies a mean
    return {
        "diff_mean": _r(mean),
        "diff_sd": _r(statistics.stdev(diffs)) if len(diffs) > 1 else None,
        "ci95": _r(half),
        "pairs": len(diffs),
        "better": better,
    }


# --------------------------------------------------------------------------- rows
def _rows(runs: list[dict], cols: list[str]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault(tuple(_canon(get(run["config"], c)) for c in cols), []).append(run)
    hidden = {c: constant_options([get(members[0]["config"], c) for members in groups.values()]) for c in cols}
    rows = []
    for members in groups.values():
        config = {c: get(members[0]["config"], c) for c in cols}
        measured = [m for r in members for m in r["per_seed"]]
        row = {
            "cell": {
                c: compact(config[c], hidden[c])
                if isinstance(config[c], (dict, list))
                else (None if config[c] is _MISSING else config[c])
                for c in cols
            },
            "config": {c: None if v is _MISSING else v for c, v in config.items()},
            "runs": [r["run"] for r in members],
            "seeds": sorted(m["seed"] for m in measured if m["seed"] is not None),
            "per_seed": measured,
            "vs_reference": None,
        }
        for stat in STAT_NAMES:
            row[stat] = spread([m[stat] for m in measured if m[stat] is not None], stat == "gain")
        rows.append(row)
    return rows  # in the order of each cell's first run: a sweep's grid order, or the order given


def parse_reference(reference) -> list[tuple[str, Any]]:
    """``'finetune.regularizers=[] finetune.head=reinit'`` (or a list of such) as ``[(key, value)]``."""
    from sftcore._config.overrides import parse_override

    texts = [reference] if isinstance(reference, str) else [str(t) for t in reference]
    parts = [p for t in texts for p in re.split(r"\s+(?=[\w.\-]+=)", t.strip()) if p]
    if not parts:
        raise ConfigError(
            "--reference is empty; name the reference cell as KEY=VALUE, e.g. --reference 'finetune.regularizers=[]'"
        )
    out = []
    for part in parts:
        try:
            path, value = parse_override(part)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("--set", "--reference", 1)) from None
        out.append((".".join(path), value))
    return out


def _matches(node, want) -> bool:
    """A config value against a --reference value: a name stands for its component, a mapping for the
    options it gives."""
    if node is _MISSING:
        return False
    if isinstance(want, str) and isinstance(node, dict):
        return node.get("name") == want
    if isinstance(want, dict) and isinstance(node, dict):
        return all(k in node and _matches(node[k], v) for k, v in want.items())
    if isinstance(want, list) and isinstance(node, list):
        return len(want) == len(node) and all(map(_matches, node, want))
    return _same(node, want)


def _label(row: dict, cols: list[str], short: dict) -> str:
    return " ".join(f"{short[c]}={_cut(row['cell'][c])}" for c in cols) or "(all runs)"


def _reference(reference, rows: list[dict], runs: list[dict], cols: list[str], failed: list) -> dict:
    pairs = parse_reference(reference)
    short = short_names(cols)
    by_short = {s: c for c, s in short.items()}
    wanted = []
    for key, value in pairs:
        if runs and all(get(r["config"], key) is _MISSING for r in runs):
            if key not in by_short:
                raise ConfigError(
                    f"--reference key '{key}' is in no run's config.yaml; the varied keys are: "
                    f"{', '.join(cols) or 'none'}"
                )
            key = by_short[key]
        wanted.append((key, value))
    text = " ".join(f"{k}={_leaf(v) if not isinstance(v, (dict, list)) else json.dumps(v)}" for k, v in wanted)
    hits = [i for i, row in enumerate(rows) if all(_matches(get(_first_config(row, runs), k), v) for k, v in wanted)]
    listed = "; ".join(_label(row, cols, short) for row in rows[:8]) + ("; …" if len(rows) > 8 else "")
    out = {
        "key": " ".join(k for k, _ in wanted),
        "value": wanted[0][1] if len(wanted) == 1 else [v for _, v in wanted],
        "text": text,
        "row": hits[0] if len(hits) == 1 else None,
        "rows": hits,
        "per": [],
        "of": {i: hits[0] for i in range(len(rows))} if len(hits) == 1 else {},
    }
    if len(hits) > 1:
        out["per"], out["of"] = _per_group(hits, rows, cols, wanted)
        if not out["of"]:
            which = "; ".join(_label(rows[i], cols, short) for i in hits[:8])
            raise ConfigError(f"--reference {text} matches {len(hits)} rows ({which}); add KEY=VALUE pairs to pick one")
    if not hits and not failed:
        raise ConfigError(f"--reference {text} matches no row; the rows are: {listed or 'none'}")
    if not hits:  # it may be a cell that failed: the table says so rather than losing every other row
        out["missing"] = f"--reference {text} matches no finished run ({len(failed)} failed/unfinished)"
    return out


def _per_group(hits: list[int], rows: list[dict], cols: list[str], wanted) -> tuple[list[str], dict[int, int]]:
    """A reference that names only some varied keys (``finetune.regularizers=[]`` in a grid that also varies
    the head) is one reference per setting of the other keys: each row is paired with the reference row
    that shares those settings. ``([], {})`` when the matching rows do not split that way."""
    named = [c for c in cols if any(k == c or k.startswith(c + ".") or c.startswith(k + ".") for k, _ in wanted)]
    free = [c for c in cols if c not in named]
    sign = lambda row: tuple(_canon(row["config"][c]) for c in free)  # noqa: E731
    by_sign: dict[tuple, list[int]] = {}
    for i in hits:
        by_sign.setdefault(sign(rows[i]), []).append(i)
    if not named or not free or any(len(found) > 1 for found in by_sign.values()):
        return [], {}
    return free, {i: by_sign[sign(row)][0] for i, row in enumerate(rows) if sign(row) in by_sign}


def _first_config(row: dict, runs: list[dict]) -> dict:
    return next(r["config"] for r in runs if r["run"] == row["runs"][0])


def aggregate(run_dirs, reference=None, varied=None) -> dict:
    """Finished runs grouped by their varied keys, one row per cell, aggregated over the pooled seeds (in
    percent points); ``reference`` (KEY=VALUE, as --set takes them) names the row the others are paired
    against; ``varied`` names the keys to group by (default: every key in which the runs differ)."""
    runs, failed = _load(expand_sweeps(run_dirs))
    cols, constant, pooled = columns([r["config"] for r in runs], varied)
    rows = _rows(runs, cols)
    ref = _reference(reference, rows, runs, cols, failed) if reference else None
    for i, row in enumerate(rows):
        j = ref["of"].pop(i, None) if ref is not None else None
        if j is not None and j != i:
            row["vs_reference"] = versus(row, rows[j])
    if ref is not None:
        ref.pop("of")
    return {
        "varied_keys": cols,
        "hidden_constant_keys": constant,
        "pooled_differing_keys": pooled,
        "reference": ref,
        "rows": rows,
        "failed": failed,
    }


# --------------------------------------------------------------------------- the table
def _cut(value, limit: int = MAX_CELL) -> str:
    text = "-" if value is None else _leaf(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _pm(stat: dict, signed: bool = False) -> str:
    if stat["mean"] is None:
        return "-"
    mean = f"{stat['mean']:+.1f}" if signed else f"{stat['mean']:.1f}"
    return mean if stat["sd"] is None else f"{mean} ± {stat['sd']:.1f}"


def _seeds(seeds: list[int]) -> str:
    """``3: 0-2``, ``3: 0,3,5``, ``1: 0``: how many seeds, then which (a lone ``0`` read as a count of none);
    repeated seeds (runs of one cell sharing a seed) add the number of results."""
    unique = sorted(set(seeds))
    spans, start = [], None
    for i, s in enumerate(unique):
        start = s if start is None else start
        if i + 1 == len(unique) or unique[i + 1] != s + 1:
            spans.append(str(s) if s == start else f"{start}-{s}")
            start = None
    text = f"{len(unique)}: {','.join(spans)}" if spans else "-"
    return text if len(unique) == len(seeds) else f"{text} ({len(seeds)} results)"


def _vs(row: dict, i: int, ref: dict) -> str:
    if i in ref["rows"]:
        return "reference"
    vs = row["vs_reference"]
    if not vs or vs["diff_mean"] is None:
        return "-"
    if vs["ci95"] is None:
        return f"{vs['diff_mean']:+.1f} (1 seed)"
    word = {True: "better", False: "worse", None: "unclear"}[vs["better"]]
    return f"{vs['diff_mean']:+.1f} ±{vs['ci95']:.1f} {word}"


def _cells(result: dict) -> list[list[str]]:
    cols, ref = result["varied_keys"], result.get("reference")
    short = short_names(cols)
    rows = [
        [
            *(short[c] for c in cols),
            "finetune %",
            "baseline %",
            "gain (points)",
            "95% CI",
            "seeds",
            *(["vs ref"] if ref else []),
        ]
    ]
    for i, row in enumerate(result["rows"]):
        ci = row["gain"]["ci95"]
        rows.append(
            [
                *(_cut(row["cell"][c]) for c in cols),
                _pm(row["finetune"]),
                _pm(row["baseline"]),
                _pm(row["gain"], signed=True),
                "-" if ci is None else f"±{ci:.1f}",
                _seeds(row["seeds"]),
                *([_vs(row, i, ref)] if ref else []),
            ]
        )
    return rows


def _footer(result: dict, show_failed: bool) -> list[str]:
    cols, ref, short = result["varied_keys"], result.get("reference"), short_names(result["varied_keys"])
    lines = []
    if any(short[c] != c for c in cols):
        lines.append("keys: " + ", ".join(f"{short[c]} = {c}" for c in cols if short[c] != c))
    if result["rows"]:
        lines.append("mean ± sd over seeds; gain: finetune - baseline paired by seed, 95% CI over seeds")
    if ref and ref["per"]:
        lines.append(
            f"vs ref: finetune minus the reference ({ref['text']}) with the same "
            f"{', '.join(short[c] for c in ref['per'])}, paired by seed, ± its 95% CI"
        )
    elif ref and ref["rows"]:
        lines.append(f"vs ref: finetune minus the reference ({ref['text']}) paired by seed, ± its 95% CI")
    elif ref:
        lines.append(ref["missing"])
    if result["pooled_differing_keys"]:
        pooled = result["pooled_differing_keys"]
        more = " …" if len(pooled) > 5 else ""
        lines.append(f"pooled in rows although they differ: {', '.join(pooled[:5])}{more}")
    lines.append(f"{result['hidden_constant_keys']} constant config keys hidden")
    failed = result["failed"]
    if failed and show_failed:
        lines.extend(f"{f['status']}: {f['run']}" + (f" ({f['error']})" if f["error"] else "") for f in failed)
    elif failed:
        lines.append(f"{len(failed)} failed/unfinished run(s) hidden (--all lists them)")
    return lines


def table(result: dict, show_failed: bool = False) -> str:
    """One row per cell: the varied keys (short names, a legend below), finetune and baseline test accuracy
    and the gain as mean ± sd over seeds, the gain's 95% interval, the seeds, and ``vs ref``."""
    rows = _cells(result)
    keys = len(result["varied_keys"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) if i < keys else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
        for row in rows
    ]
    lines.insert(1, "-" * max(len(line) for line in lines))
    if not result["rows"]:
        lines.append("no finished runs")
    elif not keys and len(result["rows"][0]["runs"]) > 1:
        lines.append("the configs are identical: their seeds are pooled")
    return "\n".join(lines + _footer(result, show_failed))


def csv_rows(result: dict) -> list[dict]:
    """One flat dict per row for sweep.csv: the varied keys (full names), then the numbers (points)."""
    out = []
    for row in result["rows"]:
        flat = {c: row["cell"][c] for c in result["varied_keys"]}
        for stat in STAT_NAMES:
            flat.update({f"{stat}_{k}": v for k, v in row[stat].items()})
        vs = row["vs_reference"] or {}
        if result.get("reference"):
            flat.update({f"vs_reference_{k}": vs.get(k) for k in ("diff_mean", "diff_sd", "ci95", "pairs", "better")})
        flat["seeds"] = " ".join(map(str, row["seeds"]))
        flat["runs"] = " ".join(row["runs"])
        out.append(flat)
    return out
