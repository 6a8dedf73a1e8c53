"""The run directory: its layout (file names, stage names, what makes a folder a run), the checkpoint
format, and the files a run writes as it trains (metrics.jsonl, predictions/).

May import: sftcore._plugins, sftcore._fileio, sftcore._runtime, sftcore.errors (not sftcore._config, its
sibling). Imports no torch until a checkpoint is read or written."""
