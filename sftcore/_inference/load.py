"""``sftcore.load``: a trained stage's model outside the run, needing only the backbone's plugin.

The model is rebuilt through the backbone registry from the backbone entry and seed the run used (in
the model file; older files: the run's config.yaml), then given the file's weights. Nothing else of
the run's config is read, so datasets, heads and regularizers from plugins not installed here do not
matter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftcore._rundir import checkpoints
from sftcore._rundir import layout as rundir
from sftcore.errors import ConfigError, SftError, show

if TYPE_CHECKING:  # pragma: no cover
    import torch

BATCH = 64


@dataclass
class Prediction:
    """One image's prediction: ``image`` (its path, or ``<image N>`` for an in-memory image) and ``top``,
    the ``(class, probability)`` pairs, most probable first."""

    image: str
    top: list[tuple[str, float]]

    @property
    def label(self) -> str:
        """The most probable class."""
        return self.top[0][0]

    @property
    def classes(self) -> list[str]:
        return [c for c, _ in self.top]

    @property
    def probabilities(self) -> list[float]:
        return [p for _, p in self.top]

    def as_dict(self) -> dict:
        return {"image": self.image, "top": [{"class": c, "probability": p} for c, p in self.top]}


def model_file(path, stage: str | None = None) -> Path:
    """The model file a run directory's ``stage`` left, or ``path`` itself when it is a file.

    The default stage is the last one trained on the target task: finetune, else the baseline (a run
    without finetune), else pretrain (a pretrain-only run)."""
    p = Path(path)
    if p.is_file():
        if stage is not None:
            raise SftError(f"'{p}' is a model file; --stage picks a stage of a run directory, drop it")
        return p
    run = rundir.check(p)
    raw = rundir.config(run)
    if stage is None:
        stage = next((s for s in ("finetune", "baseline", "pretrain") if raw.get(s)), "finetune")
    base, _, seed = stage.partition("-seed")  # finetune-seed1: another seed's model of that stage
    if base not in rundir.STAGES or (seed and not seed.isdigit()):
        raise SftError(
            f"--stage must be one of {', '.join(rundir.STAGES)} (or one of them with -seed<N> "
            f"for another seed), not '{stage}'"
        )
    if not raw.get(base):
        ran = [s for s in rundir.STAGES if raw.get(s)]
        raise SftError(f"run '{run}' has no {stage} stage; choose --stage {' or '.join(ran) or 'finetune'}")
    if raw.get("checkpoints") is False:
        raise SftError(
            f"run '{run}' was made with `checkpoints: false`, so it kept no model; "
            "rerun it with checkpoints on to predict"
        )
    _, path = checkpoints.paths(run, stage)
    assert path is not None  # a run directory, checkpoints on
    if not path.is_file():
        raise SftError(
            f"run '{run}' has no finished {stage} stage (no {path}); finish it with `sft run --resume {run}`"
        )
    return path


def _backbone_entry(path: Path, state: dict) -> tuple[dict, int, dict]:
    """The backbone entry, run seed and plugin record the model was built with."""
    if isinstance(state.get("backbone"), dict):
        return state["backbone"], int(state.get("run_seed", 0)), state.get("backbone_plugin") or {}
    run = path.parent.parent  # an older model file: its run's config.yaml says
    if not rundir.is_run(run):
        raise SftError(
            f"'{path}' does not record its backbone and is not inside its run directory "
            "(checkpoints/<stage>.pt of a run); load it from the run directory"
        )
    raw = rundir.config(run)
    from sftcore._config import resolve as cfgmod

    return raw.get("backbone", cfgmod.RUN_DEFAULTS["backbone"]), raw.get("seed", cfgmod.RUN_DEFAULTS["seed"]), {}


def _start(path: Path, state: dict) -> dict:
    """Where a compact model file's frozen base comes from (``{}``: a whole file, the backbone's weights follow)."""
    base = state.get(checkpoints.FROZEN_BASE)
    start = base.get("start") if isinstance(base, dict) else None
    if base is not None and not isinstance(start, dict):
        raise SftError(f"'{path}' is damaged or was edited: frozen_base does not say where its base comes from")
    return start or {}


def _base_weights(path: Path, start: dict, backbone) -> None:
    """A compact file of a finetune after pretraining: the frozen base is the pretrain stage's backbone."""
    tag = start.get("pretrain")
    if not isinstance(tag, str):
        return
    source = path.parent / f"{tag}.pt"
    if not source.is_file():
        raise SftError(
            f"'{path}' holds only what its adapter trained; its frozen base is the run's {tag} model: keep "
            f"checkpoints/{tag}.pt beside it, or load from the run directory"
        )
    state = checkpoints.read_model_file(source, "checkpoint", "use the run's own checkpoints folder")
    features, _ = checkpoints.split_state(state["model"])
    backbone.features.load_state_dict(features)


def _build_backbone(path: Path, entry: Any, seed: Any, plugin: dict, start: dict | None = None):
    from sftcore._config import resolve as cfgmod
    from sftcore._plugins import components
    from sftcore._plugins.manager import get_registry

    registry = get_registry()
    entry = components.entry(entry, "backbone")
    if entry["name"] not in registry.components["backbones"]:
        if plugin.get("plugin") and plugin.get("distribution"):
            source = (
                f"plugin '{plugin['plugin']}' of distribution '{plugin['distribution']}' "
                f"(pip install {plugin['distribution']})"
            )
        elif plugin.get("plugin"):
            source = f"plugin '{plugin['plugin']}' (registered at run time, not from an installed distribution)"
        else:
            source = (
                "the plugin that registers it (the one the run was trained with; older model files do not record which)"
            )
        raise ConfigError(
            f"'{path}' needs backbone {show(entry['name'])}, and no installed plugin provides it: install {source}"
        ) from None
    checked = components.check(entry, "backbones", "backbone", registry)
    start = start or {}  # a whole file: a random init, its weights follow; a compact one: its base as the run had it
    seed, random_init = start.get("seed", seed), start.get("random_init", True) is not False
    return components.build_backbone(checked, registry, cfgmod._int(seed, "seed", 0, cfgmod.MAX_SEED), random_init)


def _adapter(path: Path, state: dict, backbone):
    """A stage trained under an adapter (its config's ``adapter:``): the adapter, applied to the rebuilt backbone as
    in the run so that the file's keys fit (LoRA's factors); None without one."""
    entry = (state.get("config") or {}).get("adapter")
    if not entry:
        return None
    from sftcore._plugins import components
    from sftcore._plugins.contracts import pin_frozen
    from sftcore._plugins.manager import get_registry

    registry = get_registry()
    if entry.get("name") not in registry.components["adapters"]:
        raise ConfigError(
            f"'{path}' was trained with adapter {show(entry.get('name'))}, and no installed plugin provides it: "
            "install the plugin the run was trained with"
        )
    adapter = components.build(registry, "adapters", entry, "adapter")
    with components.located("adapter"):
        adapter.apply(backbone)
    pin_frozen(backbone.features)  # as in the run: a compact file's frozen base is what the adapter left frozen
    return adapter


class Model:
    """A trained stage's model, ready to use outside sftcore's runs (what :func:`sftcore.load` returns).

    Attributes:
      ``module``: the ``torch.nn.Module`` (backbone + linear head) in eval mode on ``device``: normalised
        float images ``[N, *input_shape]`` in, logits ``[N, len(classes)]`` out. A stage trained under an
        adapter is rebuilt with it, then merged (``Adapter.merge``: LoRA folded into the weights).
      ``classes``: the class names, in the order of the logits.
      ``input_shape``: ``(C, H, W)`` the module takes; ``image_shape``: ``(C, H, W)`` of the dataset's
        images (new images are brought to it first, as the run's test images were).
      ``mean``, ``std``: the per-channel normalisation (of ``x / 255``) the module expects.
      ``transform(images)``: PIL images, uint8 tensors (``[C, H, W]``, ``[H, W]`` or a batch ``[N, C, H, W]``)
        or file paths, one or a list, -> the module's input ``[N, *input_shape]`` on ``device``.
      ``predict(images, top_k=5)``: a :class:`Prediction` per image (classes and probabilities), computed in
        batches of ``BATCH`` on ``device``.
      ``device``, ``to(device)``; ``path`` (the model file) and ``stage`` (its stage tag, e.g. ``finetune``).
    """

    def __init__(self, path, stage: str | None = None, device: str = "cpu"):
        from torch import nn

        from sftcore._train.model import TransferModel

        self.path = model_file(path, stage)
        state = checkpoints.read_model_file(self.path, "checkpoint", "use checkpoints/<stage>.pt of a finished run")
        if not all(k in state for k in ("classes", "mean", "std")):
            raise SftError(f"'{self.path}' is not a sftcore stage checkpoint (needs model, classes, mean and std)")
        self.stage = str(state.get("tag") or self.path.stem)
        # tta: flip in the stage config: the run scored the mean of each image and its mirror, and so does this
        self.tta = str((state.get("config") or {}).get("tta", "none"))
        start = _start(self.path, state)
        backbone = _build_backbone(self.path, *_backbone_entry(self.path, state), start)
        _base_weights(self.path, start, backbone)
        adapter = _adapter(self.path, state, backbone)
        self.classes = [str(c) for c in state["classes"]]
        self.module = TransferModel(backbone, nn.Linear(backbone.num_features, len(self.classes)))
        checkpoints.load_model(
            self.module,
            state,
            self.path,
            "the file does not fit the model its backbone entry "
            "builds (sftcore rebuilds linear heads); was config.yaml edited after the run?",
        )
        if adapter is not None:  # one plain module (LoRA folded into the weights): what predict and export use
            merged = replace(backbone, features=adapter.merge(backbone.features))
            self.module = TransferModel(merged, self.module.head)
        self.image_shape, self.input_shape = _shapes(self.path, state, backbone)
        self.mean, self.std = [float(m) for m in state["mean"]], [float(s) for s in state["std"]]
        self.module.eval()
        self.to(device)

    def to(self, device) -> Model:
        """Move the module to ``device`` (``cpu``, ``cuda``, ``cuda:1``, ``auto``: cuda when there is one);
        returns self."""
        import torch

        from sftcore._data.batches import BatchTransform

        self.device = resolve_device(device)
        # the runner's evaluation: channels_last, fp32
        # torch's stubs lack Module.to(device, memory_format=...), which torch accepts
        moved = self.module.to(self.device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.module = moved.eval()
        self._prepare = BatchTransform(
            self.mean, self.std, None, self.image_shape, self.input_shape, self.device, channels_last=True
        )
        return self

    def __repr__(self) -> str:
        return (
            f"<sftcore Model {self.stage} from '{self.path}': {len(self.classes)} classes, input "
            f"{list(self.input_shape)}, images {list(self.image_shape)}, on {self.device}>"
        )

    def images(self, images) -> torch.Tensor:
        """uint8 ``[N, C, H, W]`` at the dataset's image size from file paths, PIL images or uint8 tensors."""
        import torch

        from .predict import read_image, to_uint8

        out = []
        for x in _as_list(images):
            if isinstance(x, (str, Path)):
                out.append(read_image(x, self.image_shape))
            elif isinstance(x, torch.Tensor) and x.ndim == 4:
                out.extend(to_uint8(one, self.image_shape) for one in x)
            else:
                out.append(to_uint8(x, self.image_shape))
        return torch.stack(out) if out else torch.zeros(0, *self.image_shape, dtype=torch.uint8)

    def transform(self, images) -> torch.Tensor:
        """The module's input for ``images`` (one or a list): brought to the dataset's image size, resized to
        ``input_shape`` and normalised as the run's test images were; a float ``[N, *input_shape]`` on ``device``."""
        return self._prepare(self.images(images).to(self.device))

    __call__ = transform

    def logits(self, images) -> torch.Tensor:
        """The module's logits ``[N, len(classes)]`` (on the CPU) for ``images``, decoded and run ``BATCH``
        at a time."""
        import torch

        items = _as_list(images)
        parts = []
        with torch.inference_mode():
            for i in range(0, len(items), BATCH):
                batch = self.images(items[i : i + BATCH]).to(self.device)
                logits = self.module(self._prepare(batch)).float()
                if (
                    self.tta == "flip"
                ):  # as the run's test evaluation (sftcore._train.evaluate): log of the mean probability
                    flipped = self.module(self._prepare(batch.flip(3))).float()
                    logits = torch.logaddexp(logits.log_softmax(1), flipped.log_softmax(1)) - math.log(2.0)
                parts.append(logits.cpu())
        return torch.cat(parts) if parts else torch.zeros(0, len(self.classes))

    def predict(self, images, top_k: int = 5) -> list[Prediction]:
        """The ``top_k`` most probable classes of each image (one or a list of paths, PIL images, uint8
        tensors), with their probabilities; one :class:`Prediction` per image, in order."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise SftError(f"top_k must be an integer of 1 or more, got {top_k!r}")
        items = _as_list(images)
        names = [str(x) if isinstance(x, (str, Path)) else f"<image {i}>" for i, x in enumerate(items)]
        probs = self.logits(items).softmax(1)
        values, index = probs.topk(min(top_k, len(self.classes)), dim=1)
        return [
            Prediction(n, [(self.classes[j], p) for j, p in zip(c, v)])
            for n, c, v in zip(names, index.tolist(), values.tolist())
        ]


def _as_list(images) -> list:
    """One image (a path, a PIL image, a 2-/3-d tensor) or a batch tensor or a sequence of images, as a list."""
    import torch

    if isinstance(images, (str, Path)) or (isinstance(images, torch.Tensor) and images.ndim in (2, 3)):
        return [images]
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise SftError(
                f"an image tensor must be uint8 [C, H, W], [H, W] or a batch [N, C, H, W], got {tuple(images.shape)}"
            )
        return list(images)
    if hasattr(images, "convert") and hasattr(images, "size"):  # a PIL image
        return [images]
    try:  # a list may hold batch tensors too: one item per image
        return [one for x in images for one in (list(x) if isinstance(x, torch.Tensor) and x.ndim == 4 else [x])]
    except TypeError:
        raise SftError(
            f"cannot read {type(images).__name__} as images; pass file paths, PIL images or uint8 "
            "tensors, one or a list"
        ) from None


def resolve_device(device) -> torch.device:
    """``cpu``, ``cuda`` (``cuda:N``) or ``auto`` (cuda when torch sees one) as a torch.device; one line when absent."""
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise SftError(f"device must be cpu, cuda (cuda:N) or auto, not {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SftError("device is cuda but torch sees no CUDA device; use --device auto or cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise SftError(f"device {dev} does not exist: torch sees {torch.cuda.device_count()} CUDA device(s)")
    return dev


def _shapes(path: Path, state: dict, backbone) -> tuple[tuple, tuple]:
    image_shape, input_shape = state.get("image_shape"), state.get("input_shape")
    if image_shape is None or input_shape is None:  # checkpoints from before these were recorded
        if not backbone.fixed_input_size:
            raise SftError(
                f"'{path}' does not record the training image size, and this backbone takes any "
                "size; rerun the run with this sftcore version to predict with it"
            )
        image_shape = input_shape = tuple(backbone.input_size)
    image_shape, input_shape = tuple(map(int, image_shape)), tuple(map(int, input_shape))
    if image_shape[0] not in (1, 3):
        raise SftError(
            f"'{path}' was trained on {image_shape[0]}-channel images; sftcore reads grey "
            "or colour (1- or 3-channel) images only"
        )
    return image_shape, input_shape


def load(path, stage: str | None = None, device: str = "cpu") -> Model:
    """A run directory's stage (default: finetune, else baseline, else pretrain; ``finetune-seed1`` for
    another seed) or a model file (``checkpoints/<stage>.pt``, copied anywhere), as a :class:`Model` on
    ``device`` (cpu, cuda, auto). Only the backbone's plugin is needed."""
    return Model(path, stage, device)
