"""`sft rank`: candidate backbones ranked by transferability scores on the finetune stage's few labelled
training images, before any training; the features come from the run's own machinery (the Pipeline's data,
transforms and backbone building), the scores from the ``scores`` components.

May import: _run, _train, _data, _rundir, _config, _plugins, _fileio, _runtime, errors.
"""
