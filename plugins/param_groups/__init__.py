"""Built-in parameter groupings. Registration is lazy: listing them imports no torch."""

from sftcore import hookimpl

_GROUPS = {
    "backbone_head": ("BackboneHead", "Two groups: the backbone at lr * backbone_lr_mult, the head at lr"),
    "layer_decay": (
        "LayerDecay",
        "Layer-wise lr decay over the backbone's blocks: lr * decay ** depth from the top (BEiT, timm)",
    ),
}


@hookimpl
def register_param_groups(register):
    for name, (cls, description) in _GROUPS.items():
        register(name, f"sftcore_plugins.param_groups.groups:{cls}", description)
