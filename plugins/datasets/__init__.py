"""Built-in datasets: CIFAR-10/100, torchvision's datasets, Hugging Face datasets, image folders, manifest tables and
the embedded shapes."""

from sftcore import hookimpl


@hookimpl
def register_datasets(register):
    register(
        "cifar10",
        "sftcore_plugins.datasets.cifar:cifar10",
        "CIFAR-10 in torchvision's on-disk format under root (download: true fetches it)",
    )
    register(
        "cifar100",
        "sftcore_plugins.datasets.cifar:cifar100",
        "CIFAR-100 in torchvision's on-disk format under root (download: true fetches it)",
    )
    register(
        "image_folder",
        "sftcore_plugins.datasets.image_folder:image_folder",
        "Your own images: one sub-folder per class, any size, resized to the backbone's input",
    )
    register(
        "torchvision",
        "sftcore_plugins.datasets.torchvision_datasets:torchvision",
        "torchvision's classification datasets (Flowers102, DTD, MNIST, ...) by class name, official splits",
    )
    register(
        "manifest",
        "sftcore_plugins.datasets.manifest:manifest",
        "A CSV (or parquet) table of image paths and labels per split, paths relative to the table",
    )
    register(
        "hf",
        "sftcore_plugins.datasets.hf:hf",
        "Hugging Face datasets: a hub name, a save_to_disk folder or parquet/arrow files (extra: sftcore[hf])",
    )
    register(
        "shapes",
        "sftcore_plugins.datasets.shapes:shapes",
        "Embedded procedural shapes, generated from a seed: task source or target, no files",
    )
