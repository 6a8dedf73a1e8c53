"""Using a trained model: sftcore.load, `sft predict` and `sft export`.

May import: sftcore._train and everything below it."""
