"""``sftcore.load``: a trained stage's model outside the run, needing only the backbone's plugin.

The model is rebuilt through the backbone registry from the backbone entry and seed the run used (in
the model file; older files: the run's config.yaml), then given the file's weights. Nothing else of
the run's config is read, so datasets, heads and regularizers from plugins not installed here do not
matter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from . import _rundir as rundir
from .errors import ConfigError, SftError, show

if TYPE_CHECKING:  # pragma: no cover
    import torch

BATCH = 64


@dataclass
class Prediction:
    image: str
    top: list[tuple[str, float]]  # (class, probability), most probable first

    def as_dict(self) -> dict:
        return {"image": self.image, "top": [{"class": c, "probability": p} for c, p in self.top]}


def model_file(path, stage: str | None = None) -> Path:
    """The model file a run directory's ``stage`` (default: finetune, else pretrain) left, or ``path``
    itself when it is a file."""
    p = Path(path)
    if p.is_file():
        if stage is not None:
            raise SftError(f"'{p}' is a model file; --stage picks a stage of a run directory, drop it")
        return p
    run = rundir.check(p)
    raw = rundir.config(run)
    if stage is None:
        stage = "finetune" if raw.get("finetune") else "pretrain"
    base, _, seed = stage.partition("-seed")  # finetune-seed1: another seed's model of that stage
    if base not in rundir.STAGES or (seed and not seed.isdigit()):
        raise SftError(f"--stage must be one of {', '.join(rundir.STAGES)} (or one of them with -seed<N> "
                       f"for another seed), not '{stage}'")
    if not raw.get(base):
        ran = [s for s in rundir.STAGES if raw.get(s)]
        raise SftError(f"run '{run}' has no {stage} stage; choose --stage {' or '.join(ran) or 'finetune'}")
    if raw.get("checkpoints") is False:
        raise SftError(f"run '{run}' was made with `checkpoints: false`, so it kept no model; "
                       "rerun it with checkpoints on to predict")
    path = run / "checkpoints" / f"{stage}.pt"
    if not path.is_file():
        raise SftError(f"run '{run}' has no finished {stage} stage (no {path}); "
                       f"finish it with `sft run --resume {run}`")
    return path


def _backbone_entry(path: Path, state: dict) -> tuple[dict, int, dict]:
    """The backbone entry, run seed and plugin record the model was built with."""
    if isinstance(state.get("backbone"), dict):
        return state["backbone"], int(state.get("run_seed", 0)), state.get("backbone_plugin") or {}
    run = path.parent.parent  # an older model file: its run's config.yaml says
    if not (run / "config.yaml").is_file():
        raise SftError(f"'{path}' does not record its backbone and is not inside its run directory "
                       "(checkpoints/<stage>.pt of a run); load it from the run directory")
    raw = rundir.config(run)
    from . import _config as cfgmod

    return raw.get("backbone", cfgmod.RUN_DEFAULTS["backbone"]), raw.get("seed", cfgmod.RUN_DEFAULTS["seed"]), {}


def _build_backbone(path: Path, entry: Any, seed: Any, plugin: dict):
    from . import _components as components
    from . import _config as cfgmod
    from ._plugins import get_registry

    registry = get_registry()
    entry = components.entry(entry, "backbone")
    try:
        registry.get("backbones", entry["name"])
    except ConfigError as exc:
        source = (f"plugin '{plugin['plugin']}'" + (f" (pip install {plugin['distribution']})"
                                                   if plugin.get("distribution") else "")) if plugin else \
            "the plugin that registers it (the one the run was trained with)"
        raise ConfigError(f"'{path}' needs backbone {show(entry['name'])} to rebuild its model, and no installed "
                          f"plugin provides it: install {source}; {exc}") from None
    cfg = {"backbone": components.check(entry, "backbones", "backbone", registry),
           "seed": cfgmod._int(seed, "seed", 0, cfgmod.MAX_SEED)}
    return components.build_backbone(cfg, registry, random_init=True)


class Model:
    """A trained stage's model, ready to predict: ``module`` (a ``torch.nn.Module`` in eval mode, normalised
    float images ``[N, C, H, W]`` of ``input_shape`` -> logits), ``classes``, ``image_shape`` (what the
    dataset's images were), ``mean``/``std``, ``transform(images)`` (PIL images, uint8 tensors or file
    paths -> the module's input) and ``predict(images, top_k=5)``."""

    def __init__(self, path, stage: str | None = None, device: str = "cpu"):
        import torch
        from torch import nn

        from . import _checkpoints as checkpoints
        from ._data import BatchTransform
        from ._model import TransferModel

        self.path = model_file(path, stage)
        state = checkpoints.read_model_file(self.path, "checkpoint", "use checkpoints/<stage>.pt of a finished run")
        if not all(k in state for k in ("classes", "mean", "std")):
            raise SftError(f"'{self.path}' is not a sftcore stage checkpoint (needs model, classes, mean and std)")
        backbone = _build_backbone(self.path, *_backbone_entry(self.path, state))  # random: the file's weights follow
        self.classes = [str(c) for c in state["classes"]]
        self.module = TransferModel(backbone, nn.Linear(backbone.num_features, len(self.classes)))
        checkpoints.load_model(self.module, state, self.path, "the file does not fit the model its backbone entry "
                               "builds (sftcore rebuilds linear heads); was config.yaml edited after the run?")
        self.image_shape, self.input_shape = _shapes(self.path, state, backbone)
        self.mean, self.std = [float(m) for m in state["mean"]], [float(s) for s in state["std"]]
        self.device = torch.device(device)
        # the runner's evaluation: channels_last, fp32
        self.module = self.module.to(self.device, memory_format=torch.channels_last).eval()
        self._prepare = BatchTransform(self.mean, self.std, None, self.image_shape, self.input_shape, self.device,
                                       channels_last=True)

    def images(self, images: Sequence) -> "torch.Tensor":
        """uint8 ``[N, C, H, W]`` at the dataset's image size from file paths, PIL images or uint8 tensors."""
        import torch

        from ._predict import read_image, to_uint8

        out = [read_image(x, self.image_shape) if isinstance(x, (str, Path)) else to_uint8(x, self.image_shape)
               for x in images]
        return torch.stack(out) if out else torch.zeros(0, *self.image_shape, dtype=torch.uint8)

    def transform(self, images: Sequence) -> "torch.Tensor":
        """The module's input for ``images``: resized and normalised as the run's test images were."""
        return self._prepare(self.images(images).to(self.device))

    def logits(self, images: Sequence) -> "torch.Tensor":
        import torch

        with torch.inference_mode():
            batch = self.images(images)
            parts = [self.module(self._prepare(batch[i:i + BATCH].to(self.device))).float()
                     for i in range(0, len(batch), BATCH)]
        return torch.cat(parts) if parts else torch.zeros(0, len(self.classes))

    def predict(self, images: Sequence, top_k: int = 5) -> list[Prediction]:
        """The ``top_k`` most probable classes of each image, with their probabilities."""
        names = [str(x) if isinstance(x, (str, Path)) else f"<image {i}>" for i, x in enumerate(images)]
        probs = self.logits(images).softmax(1)
        values, index = probs.topk(max(1, min(top_k, len(self.classes))), dim=1)
        return [Prediction(n, [(self.classes[j], p) for j, p in zip(c, v)])
                for n, c, v in zip(names, index.tolist(), values.tolist())]


def _shapes(path: Path, state: dict, backbone) -> tuple[tuple, tuple]:
    image_shape, input_shape = state.get("image_shape"), state.get("input_shape")
    if image_shape is None or input_shape is None:  # checkpoints from before these were recorded
        if not backbone.fixed_input_size:
            raise SftError(f"'{path}' does not record the training image size, and this backbone takes any "
                           "size; rerun the run with this sftcore version to predict with it")
        image_shape = input_shape = tuple(backbone.input_size)
    image_shape, input_shape = tuple(map(int, image_shape)), tuple(map(int, input_shape))
    if image_shape[0] not in (1, 3):
        raise SftError(f"'{path}' was trained on {image_shape[0]}-channel images; sftcore reads grey "
                       "or colour (1- or 3-channel) images only")
    return image_shape, input_shape


def load(path, stage: str | None = None, device: str = "cpu") -> Model:
    """A run directory's stage (default: finetune, else pretrain; ``finetune-seed1`` for another seed) or a
    model file (``checkpoints/<stage>.pt``), as a :class:`Model`."""
    return Model(path, stage, device)
