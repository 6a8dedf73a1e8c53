"""Data: a stage's splits checked once, few-label subsets, validation hold-outs, batches and per-batch
transforms and augmentations.

May import: sftcore._rundir, sftcore._config, sftcore._plugins, sftcore._fileio, sftcore._runtime,
sftcore.errors."""
