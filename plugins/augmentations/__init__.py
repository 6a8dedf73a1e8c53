"""Built-in augmentations: batched on the training device, per-image randomness from the stage's generator.

See docs/augmentations.md for what each does, its defaults, and what the measurements chose."""

from sftcore import hookimpl

_BUILTINS = {
    "crop": ("geometric:Crop", "random crop of the original size after zero padding (the classic CIFAR crop)"),
    "flip": ("geometric:Flip", "random horizontal flip (wrong for digits, text or anything with handedness)"),
    "random_resized_crop": (
        "geometric:RandomResizedCrop",
        "random area and aspect-ratio crop resized to the model's input (Inception, timm)",
    ),
    "color_jitter": ("color:ColorJitter", "random brightness, contrast, saturation and hue per image"),
    "trivial_augment": (
        "trivial:TrivialAugment",
        "one random op at a random strength per image (TrivialAugmentWide, Mueller & Hutter 2021)",
    ),
    "random_erasing": ("erasing:RandomErasing", "erase a random rectangle with noise (Zhong et al. 2020, timm)"),
    "mixup": ("mixing:Mixup", "blend image pairs and their labels (Zhang et al. 2018); soft targets"),
    "cutmix": ("mixing:CutMix", "paste a box of another image, labels by area (Yun et al. 2019); soft targets"),
}


@hookimpl
def register_augmentations(register):
    for name, (target, doc) in _BUILTINS.items():
        register(name, f"sftcore_plugins.augmentations.{target}", doc)
