"""Built-in param_groups (filled in below)."""
