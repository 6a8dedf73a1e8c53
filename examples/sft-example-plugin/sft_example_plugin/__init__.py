"""sft-example-plugin: sftcore components of every kind, registered lazily.

This module is what the ``sftcore`` entry point loads. It must stay cheap: no torch import here.
Each component lives in its own module and is registered as a ``"module:attr"`` string that
sftcore imports only when the component is built. To add a component, write its module and add
one line to the matching table below. The ``sft example-info`` command lives in ``command.py``.
"""

from sftcore import hookimpl

__version__ = "0.1.0"  # the same as pyproject.toml's
PLUGIN = "example"  # the entry-point name, under which sftcore lists these components
DISTRIBUTION = "sft-example-plugin"
_PKG = __name__

# name -> (module:attr inside this package, one-line description shown by `sft list`)
DATASETS = {
    "stripes": ("stripes:stripes",
                "Procedural striped images (4 classes by stripe orientation), generated from the seed"),
    "npz": ("npz:npz", "Your images as numpy arrays in a .npz file (x_train/y_train or train_images/train_labels)"),
}
BACKBONES = {
    "tiny_cnn": ("tiny_cnn:tiny_cnn",
                 "A two-stage CNN (conv-bn-relu-pool x2, global pool) that trains in seconds on a CPU"),
}
REGULARIZERS = {
    "l1": ("l1:L1", "alpha * sum(|w|) over conv/linear weights (sparsity-inducing)"),
    "delta": ("delta:Delta", "DELTA: attention-weighted feature-map distance to the start + beta/2 ||w_head||^2 "
                             "(Li et al., ICLR 2019)"),
    "bss": ("bss:BSS", "BSS: eta * sum of the k smallest squared singular values of the batch features "
                       "(Chen et al., NeurIPS 2019)"),
}
HEADS = {
    "zero_init": ("zero_init:ZeroInit", "A new linear head with zero weights and bias; train everything"),
}
PARAM_GROUPS = {
    "discriminative": ("discriminative:Discriminative",
                       "Discriminative lrs (fastai): backbone blocks geometric from lr*mult/div up to lr*mult, the head at lr"),
}
CALLBACKS = {
    "stop_at_accuracy": ("stop_at_accuracy:StopAtAccuracy",
                         "Stop a stage once train (or val) accuracy reaches a threshold; stopped_at.json lists the epochs"),
}
AUGMENTATIONS = {
    "gaussian_noise": ("gaussian_noise:GaussianNoise",
                       "Add Gaussian pixel noise (std on the [0, 1] scale) to a random share p of the images"),
}
COMMANDS = ("example-info",)

# kind (as sftcore names it) -> table; what the register_<kind> hooks below register
TABLES = {"datasets": DATASETS, "backbones": BACKBONES, "regularizers": REGULARIZERS, "heads": HEADS,
          "param_groups": PARAM_GROUPS, "callbacks": CALLBACKS, "augmentations": AUGMENTATIONS}


def info() -> dict:
    """What this plugin adds, from the tables alone (no component module is imported): ``sft example-info``."""
    return {"plugin": PLUGIN, "distribution": DISTRIBUTION, "version": __version__,
            "components": {kind: [{"name": name, "description": description}
                                  for name, (_, description) in sorted(table.items())]
                           for kind, table in TABLES.items()},
            "commands": list(COMMANDS)}


def _register_all(register, table):
    for name, (target, description) in table.items():
        register(name, f"{_PKG}.{target}", description)


@hookimpl
def register_datasets(register):
    _register_all(register, DATASETS)


@hookimpl
def register_backbones(register):
    _register_all(register, BACKBONES)


@hookimpl
def register_regularizers(register):
    _register_all(register, REGULARIZERS)


@hookimpl
def register_heads(register):
    _register_all(register, HEADS)


@hookimpl
def register_param_groups(register):
    _register_all(register, PARAM_GROUPS)


@hookimpl
def register_callbacks(register):
    _register_all(register, CALLBACKS)


@hookimpl
def register_augmentations(register):
    _register_all(register, AUGMENTATIONS)


@hookimpl
def register_commands(cli):
    from .command import add  # click only; the command imports what it needs when it runs

    add(cli)
