"""Built-in optimizers and learning-rate schedules. Registration is lazy: listing them imports no torch."""

from sftcore import hookimpl

_OPTIMIZERS = {
    "sgd": "SGD with momentum (optionally Nesterov); weight_decay is coupled L2 (torch.optim.SGD)",
    "adamw": "AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, ICLR 2019)",
    "adam": "Adam (Kingma & Ba, ICLR 2015); weight_decay is coupled L2, as torch.optim.Adam",
}
_SCHEDULES = {
    "cosine": "Half a cosine from 1 to 0 over the stage, after an optional linear warmup",
    "step": "Multiply the lr by gamma every step_size epochs, after an optional linear warmup",
    "none": "A constant lr, after an optional linear warmup",
    "one_cycle": "The 1cycle policy: cosine up from lr/div_factor to lr, then down (Smith 2018; fastai, OneCycleLR)",
    "warmup_cosine": "Linear warmup, then a cosine from 1 down to min_factor (timm's CosineLRScheduler)",
}


@hookimpl
def register_optimizers(register):
    for name, description in _OPTIMIZERS.items():
        register(name, f"sftcore_plugins.optim.optimizers:{name}", description)


@hookimpl
def register_schedules(register):
    for name, description in _SCHEDULES.items():
        register(name, f"sftcore_plugins.optim.schedules:{name}", description)
