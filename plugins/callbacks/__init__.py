"""Built-in callbacks: loggers (CSV, TensorBoard, MLflow) and early stopping.

Registered lazily: importing this package imports neither torch, tensorboard nor mlflow, so
``sft list`` stays fast; each module is imported when a run builds its callback.
"""

from sftcore import hookimpl


@hookimpl
def register_callbacks(register):
    register(
        "csv",
        "sftcore_plugins.callbacks.csv_log:CSVLog",
        "One CSV row per epoch of every stage (metrics.csv in the run directory)",
    )
    register(
        "tensorboard",
        "sftcore_plugins.callbacks.tensorboard_log:TensorBoardLog",
        "TensorBoard scalars per epoch, one log folder per stage (needs the tensorboard package)",
    )
    register(
        "mlflow",
        "sftcore_plugins.callbacks.mlflow_log:MLflowLog",
        "Log the config, epoch metrics, results and run directory to an MLflow run (needs mlflow)",
    )
    register(
        "early_stopping",
        "sftcore_plugins.callbacks.early_stopping:EarlyStopping",
        "Stop a stage when a monitored metric has not improved for `patience` epochs",
    )
