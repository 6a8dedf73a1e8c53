"""Built-in adapters (parameter-efficient finetuning): which backbone parameters a stage trains, and for LoRA
the low-rank factors it adds. Registration is lazy: listing them imports neither torch nor peft."""

from sftcore import hookimpl

_ADAPTERS = {
    "lora": (
        "lora:LoRA",
        "LoRA through peft: W + (alpha/r) B A on the target Linear/Conv layers, only A and B train "
        "(Hu et al., 2022); needs pip install 'sftcore[peft]'",
    ),
    "bitfit": ("simple:BitFit", "BitFit: only the backbone's biases train (Ben Zaken et al., 2022)"),
    "norm_only": ("simple:NormOnly", "Only the normalisation layers' scales and shifts train"),
}


@hookimpl
def register_adapters(register):
    for name, (target, description) in _ADAPTERS.items():
        register(name, f"sftcore_plugins.adapters.{target}", description)
