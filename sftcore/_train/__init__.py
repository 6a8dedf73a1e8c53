"""Training: the model (backbone + head), the one training loop (Stage, built from StageParts),
parameter groups and optimizers, callbacks' events and evaluation.

May import: sftcore._data and everything below it (the process itself is sftcore._runtime's)."""
