"""Any timm model as a sftcore backbone: features and the head its weights came with, kept apart.

Weights come from the timm hub (``pretrained: true``), from a local file (``weights: PATH``: a
timm/torchvision-style state dict, a timm training checkpoint, a ``.safetensors`` file or a
sftcore ``checkpoints/<stage>.pt``), or not at all (``ctx.random_init``, the scratch baseline).
Files go through timm's own ``load_pretrained`` (``pretrained_cfg_overlay``), not a plain
``load_state_dict``, so that a model's checkpoint filter (e.g. ViT position embeddings resampled
for ``model_args: {img_size: 32}``) and first-conv adaptation (``in_chans``) apply to files too.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import difflib
import functools
import math
from pathlib import Path
from typing import Any, TypeGuard, cast

import timm
import torch
from timm.models import clean_state_dict, get_pretrained_cfg, group_parameters
from torch import nn

from sftcore.api import Backbone, BackboneContext, Checkpoint, as_checkpoint, check_option
from sftcore.errors import ConfigError, show

WHERE = "config: backbone"
# create_model arguments this factory sets itself; model_args must not fight over them.
_RESERVED = {
    "pretrained": "pretrained",
    "pretrained_cfg": None,
    "pretrained_cfg_overlay": "weights",
    "checkpoint_path": "weights",
    "num_classes": None,
    "in_chans": "in_chans",
    "features_only": None,
}


def _input_geometry(cfg: dict, in_chans, img_size, args: dict) -> tuple[int, tuple[int, int], bool]:
    """Channels, (height, width) and whether the model needs exactly that size (a ViT, or img_size set)."""
    channels = in_chans or cfg.get("input_size", (3, 224, 224))[0]
    size = img_size or args.get("img_size") or cfg.get("input_size", (3, 224, 224))[1:]
    size = (size, size) if isinstance(size, int) else tuple(size)
    fixed = img_size is not None or (
        bool(cfg.get("fixed_input_size", False))
        and not args.get("dynamic_img_size", False)
        and args.get("strict_img_size", True)
    )
    return channels, size, fixed


def timm_backbone(
    ctx: BackboneContext,
    model: str = "resnet18",
    pretrained: bool = False,
    weights: str | None = None,
    model_args: dict | None = None,
    classes: list[str] | None = None,
    in_chans: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    img_size: int | None = None,
) -> Backbone:
    """Any timm model (model: resnet18, ...), hub weights or a local weights file.

    ``model_args`` go to ``timm.create_model`` (e.g. ``{img_size: 32}`` for a ViT); ``classes``
    names the rows of the head that came with the weights; ``mean``/``std`` override the
    normalisation the weights were trained with. ``img_size`` resizes every batch to that size
    (e.g. 224 to meet ImageNet weights at their resolution); by default CNNs see the data's
    own size and fixed-size models (ViTs) their configured one.
    """
    validate_options(WHERE, model, pretrained, weights, model_args, classes, in_chans, mean, std, img_size)
    name = _check_model(model)
    args = _check_model_args(model_args)
    if img_size is not None:
        fixed = getattr(timm.models.get_pretrained_cfg(name.split(".")[0]), "fixed_input_size", False)
        if fixed and "img_size" not in args:  # a ViT must be built for the size it will see
            args["img_size"] = img_size
    if in_chans is not None:
        args["in_chans"] = in_chans
    loaded = not ctx.random_init and (pretrained or weights is not None)
    net, source_classes, norm = _build(name, args, pretrained, weights, loaded)
    head = None
    if loaded and bool(getattr(net, "num_classes", 0)):  # a random classifier is no source head
        head = _as_head(copy.deepcopy(net.get_classifier()))
    native = _native(net)  # before the classifier goes: its name and kind
    net.reset_classifier(0)  # forward() now returns pooled pre-logit features
    if head is None:
        source_classes = None
    if classes is not None and not ctx.random_init:
        source_classes = _check_classes(classes, head)

    channels, size, fixed = _input_geometry(net.pretrained_cfg, in_chans, img_size, args)
    weights_mean, weights_std = norm or (None, None)
    return Backbone(
        features=net,
        # timm's num_features is the last stage's width; a pre-logits layer (MobileNetV3's
        # conv_head) may widen what forward() returns, and head_hidden_size says so.
        num_features=int(getattr(net, "head_hidden_size", None) or net.num_features),
        input_size=(int(channels), int(size[0]), int(size[1])),
        head=head,
        source_classes=source_classes,
        blocks=_blocks(net),
        feature_maps=_feature_maps(net),
        no_weight_decay=_no_weight_decay(net),
        mean=_per_channel(mean if mean is not None else weights_mean, channels, "mean"),
        std=_per_channel(std if std is not None else weights_std, channels, "std"),
        fixed_input_size=fixed,
        native_state_dict=native,
    )


def _build(name: str, args: dict, pretrained: bool, weights, loaded: bool):
    """The timm model, with the source class names and the (mean, std) of its weights when it loaded any."""
    if not loaded:
        return _create(name, args), None, None
    if pretrained:
        net = _create(name, args, hub=True)
        # timm models' own attributes (nn.Module's __getattr__ would type them as Tensor | Module)
        cfg = cast(dict, net.pretrained_cfg)
        return net, _imagenet_names(cast(int, net.num_classes)), (cfg.get("mean"), cfg.get("std"))
    state, rows, source_classes, norm = _read_weights(weights, name)
    args["num_classes"] = rows
    # The file's head loads with its real number of rows (strictly, not dropped as a
    # mismatch); label_offset 0 keeps every row. `file` only records where it came from.
    overlay = dict(file=str(weights), state_dict=state, num_classes=rows, label_offset=0)
    net = _create(name, args, weights=weights, overlay=overlay)
    cast(dict, net.pretrained_cfg).pop("state_dict", None)  # timm keeps its cfg on the model: drop that copy
    return net, source_classes, norm


# --------------------------------------------------------------------------- checks
def validate_options(
    where: str,
    model: str = "resnet18",
    pretrained: bool = False,
    weights: str | None = None,
    model_args: dict | None = None,
    classes: list[str] | None = None,
    in_chans: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    img_size: int | None = None,
) -> None:
    """Types and ranges of the options, checked when the config is resolved (before timm builds
    anything) and again by the factory, which checks what needs timm or the weights."""
    if not isinstance(model, str) or not model:
        raise ConfigError(f"{where}.model must be a timm model name such as resnet18, got {show(model)}")
    check_option("pretrained", pretrained, bool, where=where)
    if pretrained and weights is not None:
        raise ConfigError(f"{where}: give either pretrained: true (timm hub) or weights: PATH (a local file), not both")
    if weights is not None and (not isinstance(weights, str) or not weights.strip()):
        raise ConfigError(f"{where}.weights must be the path of a weights file, got {show(weights)}")
    if model_args is not None and (not isinstance(model_args, dict) or not all(isinstance(k, str) for k in model_args)):
        raise ConfigError(
            f"{where}.model_args must be a mapping of timm.create_model arguments, got {show(model_args)}"
        )
    if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
        raise ConfigError(f"{where}.classes must be a list of class names, got {show(classes)}")
    check_option("in_chans", in_chans, int, low=1, high=64, none=True, where=where)
    check_option("img_size", img_size, int, low=8, high=1024, none=True, where=where)
    for what, values in (("mean", mean), ("std", std)):
        items = values if isinstance(values, (list, tuple)) else [values]
        if values is not None and not all(_finite(v) and (what == "mean" or v > 0) for v in items):
            raise ConfigError(
                f"{where}.{what} must be a list of finite numbers{' > 0' if what == 'std' else ''}, got {show(values)}"
            )


def _finite(value: object) -> TypeGuard[int | float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        return False


cast(Any, timm_backbone).validate_options = validate_options  # a function attribute sftcore reads


def _check_model(model) -> str:
    """An architecture timm knows, with a pretrained tag (``resnet18.a1_in1k``) if one is given
    (its type was checked by validate_options)."""
    arch, _, tag = model.partition(".")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        raise ConfigError(
            f"{WHERE}: timm has no model '{model}'{hint}; list names with "
            f"python -c \"import timm; print(timm.list_models('{arch[:4]}*'))\""
        )
    if tag:
        try:
            get_pretrained_cfg(model)
        except RuntimeError:
            tags = [m.partition(".")[2] for m in timm.list_pretrained(f"{arch}.*")]
            raise ConfigError(
                f"{WHERE}: timm model '{arch}' has no weights tagged '{tag}'; its tags are: "
                f"{', '.join(tags) or '(none)'}"
            ) from None
    return model


def _check_model_args(model_args) -> dict:
    if model_args is None:  # a mapping of string keys: validate_options checked it
        return {}
    for key in model_args:
        if key in _RESERVED:
            use = _RESERVED[key]
            raise ConfigError(
                f"{WHERE}.model_args: '{key}' is set by the backbone itself; "
                + (f"use the backbone option {use}: instead" if use else "remove it")
            )
    return dict(model_args)


def _check_classes(classes, head) -> list[str]:
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
        raise ConfigError(f"{WHERE}.classes must be a list of class names, got {classes!r}")
    if head is None:
        raise ConfigError(
            f"{WHERE}.classes names the rows of the classifier that comes with the weights, "
            "but there is none (no weights, or a file without one); remove classes:"
        )
    rows = _rows(head)
    if rows is not None and rows != len(classes):
        raise ConfigError(
            f"{WHERE}.classes has {len(classes)} names but the weights' classifier has {rows} "
            "rows; give one name per row"
        )
    return list(classes)


def _per_channel(values, channels: int, what: str):
    """Normalisation for ``channels`` inputs: timm's cfg is RGB, so 1 channel gets the average."""
    if values is None:
        return None
    try:
        values = [float(v) for v in (values if isinstance(values, (list, tuple)) else [values])]
    except (TypeError, ValueError):
        raise ConfigError(f"{WHERE}.{what} must be a list of numbers, got {values!r}") from None
    if len(values) == 1 or len(values) != channels:
        if len(values) not in (1, 3):
            raise ConfigError(
                f"{WHERE}.{what} has {len(values)} values for {channels} input channels; "
                "give one value or one per channel"
            )
        values = [sum(values) / len(values)] * channels
    return tuple(values)


# --------------------------------------------------------------------------- building
def _create(name: str, args: dict, hub: bool = False, weights=None, overlay: dict | None = None) -> nn.Module:
    """``timm.create_model`` (hub weights, a weights file's state dict in ``overlay``, or none) with
    its failures turned into one-line config errors."""
    if hub:
        cfg = get_pretrained_cfg(name)
        if cfg is None or not cfg.has_weights:
            raise ConfigError(
                f"{WHERE}: timm has no pretrained weights for '{name}'; use pretrained: false, "
                "another model, or weights: PATH"
            )
    try:
        return timm.create_model(name, pretrained=hub or overlay is not None, pretrained_cfg_overlay=overlay, **args)
    except TypeError as exc:
        if "argument" not in str(exc):
            raise
        raise ConfigError(f"{WHERE}.model_args: timm model '{name}' does not take them: {_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - the hub and file loaders raise many kinds
        if hub and (
            isinstance(exc, OSError) or type(exc).__module__.startswith(("huggingface_hub", "requests", "urllib"))
        ):
            cfg = get_pretrained_cfg(name)
            assert cfg is not None  # hub: checked above, before create_model
            where = cfg.hf_hub_id or cfg.url
            raise ConfigError(
                f"{WHERE}: could not get pretrained weights for '{name}' from {where} (offline or "
                f"not cached? {type(exc).__name__}: {_line(exc, 120)}); download the weights "
                "elsewhere and pass weights: PATH"
            ) from None
        if overlay is not None and isinstance(exc, (RuntimeError, KeyError, ValueError, AssertionError)):
            raise ConfigError(
                f"{WHERE}.weights '{weights}' does not fit timm model '{name}' "
                f"(check model, in_chans and model_args): {_line(exc)}"
            ) from None
        raise


def _line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _read_weights(path, name: str):
    """``(state_dict, classifier rows, class names, (mean, std) or None)`` from a local weights file.

    The file is read once (memory-mapped where torch allows) so that the classifier's real size
    is known before the model is built: its head is then loaded strictly, not dropped.
    """
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise ConfigError(
            f"{WHERE}.weights '{path}' is not a file; give the path of a weights file "
            "(.pth/.pt/.safetensors or a sftcore checkpoints/<stage>.pt)"
        )
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(p), device="cpu")
        else:
            raw = _torch_load(p)
    except Exception as exc:  # noqa: BLE001 - corrupt files raise anything from pickle to zipfile
        raise ConfigError(
            f"{WHERE}.weights '{path}' could not be read ({type(exc).__name__}: {_line(exc)}); "
            "is it a torch or safetensors weights file?"
        ) from None

    cfg = get_pretrained_cfg(name)
    classifier = cfg.classifier if cfg is not None else None
    classifier = classifier[0] if isinstance(classifier, (tuple, list)) else classifier
    classes, norm = None, None
    parts = as_checkpoint(raw)
    sftcore = parts is not None
    if parts is not None:
        state, classes, norm = _from_sftcore(parts, classifier, path)
    else:
        state = raw
        if isinstance(raw, dict):  # a timm training checkpoint: EMA weights first, as timm does
            for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
                if isinstance(raw.get(key), dict):
                    state = raw[key]
                    break
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise ConfigError(
            f"{WHERE}.weights '{path}' holds no state dict of tensors; save one with "
            "torch.save(model.state_dict(), PATH)"
        )
    state = clean_state_dict(dict(state))
    weight = state.get(f"{classifier}.weight") if classifier else None
    rows = int(weight.shape[0]) if weight is not None else 0
    if classes is None and cfg is not None and rows == cfg.num_classes:
        classes = _imagenet_names(rows)  # the model's usual head size: take it for the usual labels
    if classes is not None and len(classes) != rows:
        classes = None
    if not sftcore and cfg is not None:
        # A plain file for a timm model was trained with the model's usual normalisation; a
        # sftcore checkpoint only with what it recorded (else None: the runner uses the dataset's).
        norm = cfg.mean, cfg.std
    return state, rows, classes, norm


def _torch_load(p: Path):
    """``torch.load`` without arbitrary pickles (timm training checkpoints keep an argparse Namespace)."""
    safe = getattr(torch.serialization, "safe_globals", None)
    with safe([argparse.Namespace]) if safe else contextlib.nullcontext():
        try:
            return torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - legacy (non-zip) files cannot be mapped: read them whole
            return torch.load(p, map_location="cpu", weights_only=True)


def _from_sftcore(parts: Checkpoint, classifier: str | None, path):
    """A sftcore checkpoint as a timm state dict: its backbone is the timm model without its
    classifier; a linear head becomes that classifier."""
    state, head, classes = dict(parts.backbone), parts.head, parts.classes
    if classifier and set(head) in ({"weight"}, {"weight", "bias"}) and head["weight"].ndim == 2:
        state.update({f"{classifier}.{k}": v for k, v in head.items()})
    elif head:
        import warnings

        warnings.warn(
            f"{WHERE}.weights '{path}': its head is not one linear layer, so only the backbone "
            "is loaded (no source head)",
            stacklevel=3,
        )
        classes = None
    norm = (parts.mean, parts.std) if parts.mean is not None and parts.std is not None else None
    classes = list(classes) if isinstance(classes, (list, tuple)) else None
    return state, classes, norm


def _imagenet_names(rows: int) -> list[str] | None:
    """ImageNet label descriptions for a head of an ImageNet size; timm ships them (offline)."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset({"num_classes": rows})
        names = ImageNetInfo(subset).label_descriptions() if subset else None
    except Exception:  # noqa: BLE001 - names are a nicety; older timm may lack them
        return None
    return list(names) if names and len(names) == rows else None


# --------------------------------------------------------------------------- splitting
def _native(net: nn.Module):
    """``Backbone.native_state_dict`` for this timm model: the features' state dict plus the head under the
    classifier's own name (a 1x1-conv classifier gets its weight back as a conv kernel), which is what
    ``timm.create_model(name, num_classes=K)`` loads; ``None`` where timm names no single classifier."""
    cfg = getattr(net, "pretrained_cfg", None) or {}
    name = cfg.get("classifier") if isinstance(cfg, dict) else None
    if not isinstance(name, str) or not name:
        return None  # e.g. distilled ViTs: (head, head_dist)
    try:
        classifier = net.get_classifier()  # type: ignore[operator]  # timm's method, typed by Module.__getattr__
        if net.get_submodule(name) is not classifier:
            return None
    except (AttributeError, NotImplementedError):
        return None
    conv = isinstance(classifier, nn.Conv2d)
    if conv and (classifier.kernel_size != (1, 1) or classifier.groups != 1):
        return None
    if not conv and not isinstance(classifier, (nn.Linear, nn.Identity)):
        return None
    return functools.partial(_native_state_dict, name, conv)


def _native_state_dict(classifier: str, conv: bool, features: dict, head: dict) -> dict:
    if set(head) not in ({"weight"}, {"weight", "bias"}) or head["weight"].ndim != 2:
        raise ValueError(f"the head is not one linear layer (has {sorted(head)}), so it is no timm classifier")
    state = dict(features)
    for key, value in head.items():
        state[f"{classifier}.{key}"] = value[:, :, None, None] if conv and key == "weight" else value
    return state


def _as_head(classifier) -> nn.Module | None:
    """The classifier as a module over pooled features ``[N, D]`` (a 1x1 conv becomes a Linear)."""
    if not isinstance(classifier, nn.Module) or not any(True for _ in classifier.parameters()):
        return None  # e.g. distilled ViTs' (head, head_dist) pair, or an Identity
    if isinstance(classifier, nn.Conv2d) and classifier.kernel_size == (1, 1) and classifier.groups == 1:
        linear = nn.Linear(classifier.in_channels, classifier.out_channels, bias=classifier.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(classifier.weight.flatten(1))
            if classifier.bias is not None:
                linear.bias.copy_(classifier.bias)
        return linear
    return classifier


def _rows(head: nn.Module) -> int | None:
    return getattr(head, "out_features", None) or getattr(head, "out_channels", None)


def _blocks(net: nn.Module) -> list[str | list[str]]:
    """timm's coarse ``group_matcher`` groups (stem, stages, ...) as submodule names, input to output.

    A group is given by the fewest submodules holding exactly its parameters, and by the names of the
    parameters that sit directly on a module (a ViT's ``cls_token`` and ``pos_embed``, in its stem group
    with ``patch_embed`` as timm's ``param_groups_layer_decay`` puts them).
    """
    try:
        groups = group_parameters(net, net.group_matcher(coarse=True))  # type: ignore[operator]  # see _native
    except (AttributeError, NotImplementedError, TypeError):
        return []  # no grouping declared: the runner treats the backbone as one block
    blocks = []
    for gid in sorted(groups):
        names = _cover(net, set(groups[gid]))
        if names:
            blocks.append(names[0] if len(names) == 1 else names)
    return blocks


def _cover(net: nn.Module, params: set[str]) -> list[str]:
    out: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        own = [prefix + n for n, _ in module.named_parameters()]
        inside = sum(n in params for n in own)
        if not inside:
            return
        if prefix and inside == len(own):
            out.append(prefix[:-1])
            return
        out.extend(prefix + n for n, _ in module.named_parameters(recurse=False) if prefix + n in params)
        for child, sub in module.named_children():
            visit(f"{prefix}{child}.", sub)

    visit("", net)
    return out


def _no_weight_decay(net: nn.Module) -> list[str]:
    """timm's ``model.no_weight_decay()`` (names or fnmatch patterns), for the optimizer's weight-decay split."""
    listed = getattr(net, "no_weight_decay", None)
    try:
        return sorted(str(n) for n in listed()) if callable(listed) else []
    except (NotImplementedError, TypeError, AttributeError):
        return []


def _feature_maps(net: nn.Module) -> list[str]:
    """The stage outputs timm's ``feature_info`` declares (what ``features_only`` would return)."""
    names = []
    for info in getattr(net, "feature_info", None) or []:
        name = info.get("module") if isinstance(info, dict) else None
        try:
            if name:
                net.get_submodule(name)
                names.append(name)
        except AttributeError:
            continue
    return names
