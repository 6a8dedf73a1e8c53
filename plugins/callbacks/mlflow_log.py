"""The ``mlflow`` callback: one MLflow run per sftcore run. mlflow is imported only when it is used."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, TypeGuard

from sftcore.api import Callback, RunInfo, StageInfo, check_option
from sftcore.errors import ConfigError, show

if TYPE_CHECKING:
    from mlflow import MlflowClient

STATE_FILE = "mlflow-run.json"  # in the run directory: the MLflow run that --resume continues
PARAM_VALUE_LIMIT = 500
PARAM_KEY_LIMIT = 250  # what every MLflow store accepts
SKIPPED_METRICS = ("epoch", "seed")  # the step, and the same for every epoch


def flatten(config, prefix: str = "") -> dict[str, str]:
    """``{"finetune": {"optimizer": {"lr": 0.01}}}`` -> ``{"finetune.optimizer.lr": "0.01"}``. A list of
    mappings (regularizers, callbacks) is numbered (``finetune.regularizers.0.name``); other lists and
    values become strings of at most 500 characters. Characters MLflow refuses in a key become ``_``."""
    out: dict[str, str] = {}

    def walk(node, key: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(node, (list, tuple)) and any(isinstance(v, dict) for v in node):
            for i, v in enumerate(node):
                walk(v, f"{key}.{i}" if key else str(i))
        else:
            name = re.sub(r"[^\w\-./ :]", "_", key)[:PARAM_KEY_LIMIT] or "_"
            out[name] = ("null" if node is None else str(node))[:PARAM_VALUE_LIMIT]

    walk(config, prefix)
    return out


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_file_store(uri: str) -> bool:
    scheme = urllib.parse.urlparse(uri).scheme
    return scheme in ("", "file") or len(scheme) == 1  # a plain path, a file: URI, a Windows drive letter


class MLflowLog(Callback):
    """Log the resolved config, every epoch's metrics, the results and the run directory to one MLflow run.

    Params are the resolved config flattened to dotted keys (``finetune.optimizer.lr``); metrics are
    each epoch's numbers as ``<stage>/<key>`` (``finetune-seed1/val_accuracy``) at step = epoch; at the
    end come ``transfer_gain`` and each stage's ``<stage>/test_accuracy`` from the summary, then (with
    ``artifacts``) the whole run directory as artifacts. The run's id is kept in
    ``<run directory>/mlflow-run.json``, so ``sft run --resume`` continues the same MLflow run. MLflow's
    metric history is append-only: the epochs a resumed stage trains again are logged a second
    time at the same step (the later value is the run's latest). The default tracking URI is
    ``MLFLOW_TRACKING_URI`` when set, else a local file store, ``./mlruns`` (``mlflow ui
    --backend-store-uri ./mlruns``, or ``mlflow.MlflowClient("file:...")``). Needs ``mlflow`` or
    ``mlflow-skinny`` (``pip install 'sftcore[mlflow]'``). It logs through a client of its own, leaving
    MLflow's global tracking URI and active run alone.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str = "sftcore",
        run_name: str | None = None,
        artifacts: bool = True,
    ):
        self.validate_options("config: callback mlflow", tracking_uri, experiment, run_name, artifacts)
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        self.artifacts = artifacts
        self.run_id: str | None = None
        self.run_dir: Path | None = None
        self.client: MlflowClient | None = None

    @staticmethod
    def validate_options(
        where: str,
        tracking_uri: str | None = None,
        experiment: str = "sftcore",
        run_name: str | None = None,
        artifacts: bool = True,
    ) -> None:
        if tracking_uri is not None and (not isinstance(tracking_uri, str) or not tracking_uri.strip()):
            raise ConfigError(
                f"{where}.tracking_uri must be an MLflow tracking URI (file:/path/mlruns, "
                f"http://host:5000, ...) or null, got {show(tracking_uri)}"
            )
        if not isinstance(experiment, str) or not experiment.strip():
            raise ConfigError(f"{where}.experiment must be an MLflow experiment name, got {show(experiment)}")
        check_option("run_name", run_name, str, none=True, where=where)
        check_option("artifacts", artifacts, bool, where=where)
        if importlib.util.find_spec("mlflow") is None:
            raise ConfigError("callback mlflow needs the mlflow package: pip install 'sftcore[mlflow]'")

    def resolved_uri(self) -> str:
        """The tracking URI in use: the option, MLFLOW_TRACKING_URI, or ``./mlruns`` as a file: URI."""
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or Path("mlruns").absolute().as_uri()

    # ------------------------------------------------------------------ events
    def on_run_start(self, run: RunInfo) -> None:
        uri = self.resolved_uri()
        if _is_file_store(uri):
            # MLflow 3 refuses its file store unless asked (its other local store, sqlite, needs
            # sqlalchemy, which mlflow-skinny lacks); a user's own setting is kept
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        import mlflow
        from mlflow.exceptions import MlflowException

        # a client of its own: MLflow's global tracking URI and active run are left as they were
        self.client = client = mlflow.MlflowClient(uri)
        found = client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found is not None else client.create_experiment(self.experiment)

        self.run_dir = Path(run.run_dir) if run.run_dir is not None else None
        previous = self._previous_run(uri) if run.resumed else None
        self.run_id = None
        logged: dict = {}
        if previous is not None:
            try:
                existing = client.get_run(previous)
            except MlflowException:  # deleted, or not in this store: start afresh
                existing = None
            if existing is not None and existing.info.lifecycle_stage == "active":
                self.run_id, logged = previous, existing.data.params
                if existing.info.status != "RUNNING":
                    client.update_run(previous, status="RUNNING")
        if self.run_id is None:
            name = self.run_name or str((run.config or {}).get("name") or "") or None
            self.run_id = client.create_run(experiment_id, run_name=name, tags=self._tags(uri)).info.run_id
        if self.run_dir is not None:
            self._write_state({"run_id": self.run_id, "experiment_id": experiment_id, "tracking_uri": uri})

        from mlflow.entities import Param

        new = [
            Param(k, v) for k, v in flatten(run.config or {}).items() if k not in logged
        ]  # MLflow refuses to change a param a resumed run logged
        if new:
            client.log_batch(self.run_id, params=new)

    def _tags(self, uri: str) -> dict:
        """MLflow's usual run tags (user, source), the run directory, and the caller's active run as parent."""
        import mlflow

        tags = {"sftcore.run_dir": str(self.run_dir)} if self.run_dir is not None else {}
        active = mlflow.active_run()
        if active is not None and mlflow.get_tracking_uri() == uri:
            tags["mlflow.parentRunId"] = active.info.run_id
        try:
            from mlflow.tracking.context.registry import resolve_tags

            return resolve_tags(tags)
        except Exception:  # an internal of MLflow: the run goes on without those tags
            return tags

    def _log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        # called while a run is open: on_run_start made the client, then the run id
        assert self.client is not None and self.run_id is not None
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def on_epoch_end(self, stage: StageInfo, record: dict) -> None:
        if self.run_id is None:
            return
        metrics = {f"{stage.name}/{k}": float(v) for k, v in record.items() if _number(v) and k not in SKIPPED_METRICS}
        if metrics:
            self._log_metrics(metrics, int(record.get("epoch", len(stage.history))))

    def on_run_end(self, run: RunInfo, summary: dict) -> None:
        if self.run_id is None:
            return
        assert self.client is not None  # on_run_start made it before the run id
        try:
            numbers = summary_metrics(summary)
            if numbers:
                self._log_metrics(numbers, 0)
            run_dir = Path(run.run_dir) if run.run_dir is not None else self.run_dir
            if self.artifacts and run_dir is not None and run_dir.is_dir():
                self.client.log_artifacts(self.run_id, str(run_dir))
        finally:
            self.client.set_terminated(self.run_id)
            self.run_id = None

    # ------------------------------------------------------------------ mlflow-run.json
    def _previous_run(self, uri: str) -> str | None:
        """The run id an interrupted session of this run directory wrote, if it used the same store."""
        if self.run_dir is None:
            return None
        try:
            state = json.loads((self.run_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(state, dict) or state.get("tracking_uri") != uri or not isinstance(state.get("run_id"), str):
            return None
        return state["run_id"]

    def _write_state(self, state: dict) -> None:
        assert self.run_dir is not None  # written only for a run with a run directory
        path = self.run_dir / STATE_FILE
        tmp = path.with_name(f".{STATE_FILE}.tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, path)


def summary_metrics(summary) -> dict[str, float]:
    """``transfer_gain`` (and its ``_ci95``) and each stage's ``<stage>/test_accuracy``, where they are numbers."""
    if not isinstance(summary, dict):
        return {}
    out = {}
    for key in ("transfer_gain", "transfer_gain_ci95"):
        if _number(summary.get(key)) and math.isfinite(summary[key]):
            out[key] = float(summary[key])
    for stage in ("pretrain", "finetune", "baseline"):
        result = summary.get(stage)
        value = result.get("test_accuracy") if isinstance(result, dict) else None
        if _number(value) and math.isfinite(value):
            out[f"{stage}/test_accuracy"] = float(value)
    return out
