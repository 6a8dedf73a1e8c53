"""`sft sweep`: a sweep file and its cells, run locally or on Ray, resumed, and tabled.

May import: sftcore._run and everything below it."""
