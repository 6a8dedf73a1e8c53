"""Built-in callbacks (filled in below)."""
