"""Built-in backbones: the seed document's LeNet-style CNN and any timm model."""

from sftcore import hookimpl


@hookimpl
def register_backbones(register):
    register(
        "lenet",
        "sftcore_plugins.backbones.lenet:lenet",
        "The seed document's CNN: conv 6@5x5, pool, conv 16@5x5, pool, fc 120, fc 84",
    )
    register(
        "timm",
        "sftcore_plugins.backbones.timm_backbone:timm_backbone",
        "Any timm model (model: resnet18, ...), hub weights or a local weights file",
    )
