"""Commands built on the run machinery: `sft lr-find` and `sft plugin new`.

May import: sftcore._run and everything below it."""
