"""The process sftcore runs in: torch.distributed (process group, rank 0, reductions), the device and
precision, every RNG's state, and Ctrl-C / SIGTERM as a flag the loop checks.

May import: sftcore.errors and sftcore._version."""
