"""Built-in head-transfer strategies."""

from sftcore import hookimpl

_STRATEGIES = {
    "reinit": "A new, randomly initialised head for the target classes; train everything",
    "linear_probe": "Backbone frozen, only the new head trained",
    "lp_ft": "Linear probe for probe_epochs, then finetune everything (Kumar et al., ICLR 2022)",
    "gradual_unfreeze": "Unfreeze backbone blocks from the top, one more every `every` epochs",
    "match_classes": "Copy source head rows for target classes with matching names; new rows for the rest",
    "imprint": "Head rows from the normalised mean feature of each class (Qi et al., CVPR 2018), then train",
    "ncm": "Nearest class mean (cosine) of the frozen backbone's features; epochs: 0 uses it as it is",
    "logistic": "L-BFGS logistic regression on the frozen features, L2 chosen on the validation split (CLIP)",
}
_CLASSES = {
    "reinit": "Reinit",
    "linear_probe": "LinearProbe",
    "lp_ft": "LPFT",
    "gradual_unfreeze": "GradualUnfreeze",
    "match_classes": "MatchClasses",
    "imprint": "Imprint",
    "ncm": "fast:NCM",
    "logistic": "fast:Logistic",
}


@hookimpl
def register_heads(register):
    for name, description in _STRATEGIES.items():
        where = _CLASSES[name] if ":" in _CLASSES[name] else f"strategies:{_CLASSES[name]}"
        register(name, f"sftcore_plugins.heads.{where}", description)
