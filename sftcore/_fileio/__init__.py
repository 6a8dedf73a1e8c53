"""Files: the one way sftcore writes a user-visible file (atomic, never over a device, FIFO or link)
and reads a file it did not write (regular files only, bounded, UTF-8, weights-only torch loads).

May import: sftcore.errors."""
