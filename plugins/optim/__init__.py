"""Built-in optim (filled in below)."""
