"""Figures of a run, to judge it at a glance: training curves per stage and the finetuned model's confusion matrix;
of a sweep, the transfer gain per cell.

Drawn on matplotlib's Agg canvas without pyplot: no display needed, no global backend switched.
"""

from __future__ import annotations

import csv
import importlib
import io
from pathlib import Path

from sftcore._analysis import metrics
from sftcore._fileio import storage
from sftcore._rundir import layout as rundir
from sftcore.errors import SftError

NEEDS_MATPLOTLIB = "`sft plot` needs matplotlib: pip install 'sftcore[plot]'"
LABELLED_CLASSES = 30  # above this, class names on the axes overlap: the axes show class indexes
ANNOTATED_CLASSES = 15  # up to this, every cell of the confusion matrix shows its count


def plot(run_dir, out=None) -> list[Path]:
    """Write the run's figures (and the confusion counts and per-class scores as CSV) into ``out``
    (default RUN_DIR/plots); a sweep directory (it holds sweep.json) gets its gain per cell."""
    try:
        importlib.import_module("matplotlib")  # before any work: the one thing a user may need to install
    except ImportError:
        raise SftError(NEEDS_MATPLOTLIB) from None
    if (Path(run_dir) / rundir.SWEEP).is_file():
        return plot_sweep(run_dir, out)
    run = rundir.check(run_dir)
    metrics = rundir.metrics(run)
    summary = rundir.summary(run) or {}
    preds = rundir.predictions(run, "finetune")
    if not metrics and preds is None:
        raise SftError(
            f"'{run}' has no epochs in metrics.jsonl and no predictions/finetune.json: nothing to plot "
            "yet; plot again once a stage has trained an epoch"
        )
    folder = _folder(out, run)
    written = []
    for stage, records in metrics.items():
        fig = curves_figure(stage, records, (summary.get(stage) or {}).get("selected_epoch"))
        written.append(_save_png(fig, folder / f"{stage}-curves.png"))
    if preds is not None:
        classes, counts = confusion(preds)
        written.append(_save_png(confusion_figure("finetune", classes, counts), folder / "finetune-confusion.png"))
        written.append(_save_csv(classes, counts, folder / "finetune-confusion.csv"))
        written.append(_save_per_class_csv(classes, preds, folder / "finetune-per-class.csv"))
    return written


def _folder(out, parent: Path) -> Path:
    folder = Path(out) if out is not None else parent / rundir.PLOTS
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SftError(f"cannot create '{folder}': {exc.strerror or exc}; choose another --out") from None
    return folder


def plot_sweep(sweep_dir, out=None) -> list[Path]:
    """``sweep-gain.png`` (the gain per cell with its 95% interval, each seed a dot) and ``sweep-gain.csv``
    (the numbers, as sweep.csv has them) in ``out`` (default SWEEP_DIR/plots)."""
    from .aggregate import aggregate, csv_rows, sweep_settings

    sweep = Path(sweep_dir)
    result = aggregate([sweep], **sweep_settings([sweep]))
    if not result["rows"]:
        raise SftError(
            f"sweep '{sweep}' has no finished cell yet ({len(result['failed'])} failed or unfinished): "
            "nothing to plot; plot again once a cell has finished"
        )
    folder = _folder(out, sweep)
    rows = csv_rows(result)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    png = _save_png(gain_figure(result, sweep.name), folder / "sweep-gain.png")
    storage.write_text(folder / "sweep-gain.csv", buffer.getvalue())
    return [png, folder / "sweep-gain.csv"]


def gain_figure(result: dict, title: str):
    """One line per cell, top to bottom in table order: the mean gain with its 95% interval as error bars
    (none with one seed), each seed's gain a dot; 0 (no transfer effect) marked."""
    from .aggregate import _cut, short_names

    rows, cols = result["rows"], result["varied_keys"]
    short = short_names(cols)
    labels = [", ".join(f"{short[c]}={_cut(row['cell'][c], 40)}" for c in cols) or "all runs" for row in rows]
    fig = _figure(8.5, 1.6 + 0.45 * len(rows))
    ax = fig.subplots()
    drawn = 0
    for y, row in enumerate(rows):
        gain = row["gain"]
        if gain["mean"] is None:  # a cell without a baseline has no gain: its label stays, its line is empty
            continue
        ax.errorbar(
            gain["mean"],
            y,
            xerr=gain["ci95"] or 0,
            fmt="o",
            color="C0",
            capsize=4,
            label=None if drawn else "mean gain ± 95% CI",
        )
        seeds = [m["gain"] for m in row["per_seed"] if m["gain"] is not None]
        ax.plot(seeds, [y] * len(seeds), ".", color="dimgrey", zorder=3, label=None if drawn else "seeds")
        drawn += 1
    if drawn:
        ax.legend(fontsize="small")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), labels, fontsize="small")
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel("transfer gain: finetune - baseline test accuracy (points)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"{title}: gain per cell over seeds")
    return fig


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    storage.write_bytes(path, buffer.getvalue())
    return path


def _series(records: list[dict], key: str) -> tuple[list, list]:
    pairs = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [e for e, _ in pairs], [v for _, v in pairs]


def curves_figure(stage: str, records: list[dict], selected_epoch: int | None = None):
    """Loss and accuracy per epoch, train (solid) and validation (dashed); the epoch the stage kept is marked."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(10, 3.8)
    loss_ax, acc_ax = fig.subplots(1, 2)
    marker = "o" if len(records) <= 30 else None  # a one-epoch stage is a point, not an invisible line
    for ax, what, scale in ((loss_ax, "loss", 1.0), (acc_ax, "accuracy", 100.0)):
        for split, style in (("train", "-"), ("val", "--")):
            epochs, values = _series(records, f"{split}_{what}")
            if epochs:
                ax.plot(epochs, [v * scale for v in values], style, marker=marker, label=f"{split} {what}")
        if selected_epoch:
            ax.axvline(selected_epoch, color="grey", linestyle=":", label=f"kept: epoch {selected_epoch}")
        epochs = [r["epoch"] for r in records]
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy (%)" if what == "accuracy" else "loss")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    acc_ax.set_ylim(0, 100)
    fig.suptitle(f"{stage}: loss and accuracy per epoch")
    return fig


def confusion(preds: dict):
    """``(classes, counts)`` with ``counts[true, predicted]`` from a predictions/<stage>.json."""
    import numpy as np

    # classes: [] when missing, which fails the check as None would (and types as a list)
    classes, targets, predicted = preds.get("classes", []), preds.get("targets"), preds.get("predicted")
    ok = (
        isinstance(classes, list)
        and classes
        and isinstance(targets, list)
        and isinstance(predicted, list)
        and len(targets) == len(predicted)
    )
    if ok:
        t, p = (np.asarray(a) if a else np.zeros(0, dtype=np.int64) for a in (targets, predicted))
        ok = t.dtype.kind == p.dtype.kind == "i" and all(
            len(a) == 0 or (a.min() >= 0 and a.max() < len(classes)) for a in (t, p)
        )
    if not ok:
        raise SftError(
            f"predictions/{preds.get('stage', 'finetune')}.json is malformed (needs classes, and targets "
            "and predicted of equal length with class indexes); rerun the stage to rewrite it"
        )
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(counts, (t, p), 1)
    return [str(c) for c in classes], counts


def confusion_figure(stage: str, classes: list[str], counts):
    """Rows normalised (each true class sums to 1), so rare and common classes read alike; counts in the cells
    up to ANNOTATED_CLASSES, class names on the axes up to LABELLED_CLASSES."""
    import numpy as np

    n = len(classes)
    totals = counts.sum(axis=1, keepdims=True)
    fraction = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)
    side = min(16.0, max(5.0, 2.5 + 0.3 * n))
    fig = _figure(side + 1.2, side)
    ax = fig.subplots()
    image = ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class")
    if n <= LABELLED_CLASSES:
        names = [c if len(c) <= 24 else c[:23] + "…" for c in classes]
        ax.set_xticks(range(n), names, rotation=90, fontsize="small")
        ax.set_yticks(range(n), names, fontsize="small")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
    else:
        ax.set_xlabel(f"predicted class (index; names and counts in {stage}-confusion.csv)")
        ax.set_ylabel("true class (index)")
    if n <= ANNOTATED_CLASSES:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(
                        j,
                        i,
                        str(int(counts[i, j])),
                        ha="center",
                        va="center",
                        fontsize="small",
                        color="white" if fraction[i, j] > 0.5 else "black",
                    )
    total = int(counts.sum())
    accuracy = np.trace(counts) / total if total else float("nan")
    ax.set_title(f"{stage}: test accuracy {100 * accuracy:.1f}% on {total} examples (rows normalised)")
    return fig


def _save_csv(classes: list[str], counts, path: Path) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["true \\ predicted", *classes])
    for name, row in zip(classes, counts.tolist()):
        writer.writerow([name, *row])
    storage.write_text(path, buffer.getvalue())
    return path


def _save_per_class_csv(classes: list[str], preds: dict, path: Path) -> Path:
    """class, support, precision, recall, f1 per class (sftcore._analysis.metrics' conventions; empty where undefined:
    precision of a class never predicted, recall of a class with no test examples)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["class", "support", "precision", "recall", "f1"])
    for name, row in zip(classes, metrics.per_class(preds["targets"], preds["predicted"], len(classes))):
        writer.writerow(
            [name, row["support"], *("" if row[k] is None else f"{row[k]:.6f}" for k in ("precision", "recall", "f1"))]
        )
    storage.write_text(path, buffer.getvalue())
    return path
