"""Training: the model (backbone + head), the one training loop, parameter groups and optimizers,
callbacks' events, evaluation, devices and precision, RNG state, interrupts and torch.distributed.

May import: sftcore._data and everything below it."""
