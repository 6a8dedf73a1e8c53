"""Analysis of finished runs: metrics, the transfer verdict and results table, runs grouped and
compared over seeds, plots. No training; torch only where a metric needs it.

May import: sftcore._rundir and everything below it (not sftcore._train)."""
