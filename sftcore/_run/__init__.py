"""Running a config: the pipeline (pretrain -> finetune -> baseline over seeds), the runner that owns
the run directory and writes summary.json, the pretrain cache, and `sft run --nproc`.

May import: sftcore._analysis, sftcore._inference, sftcore._train and everything below them."""
