"""Classifying new image files with a run's saved model, prepared the way the run prepared its test split.

An image is decoded, given the channels and the size of the dataset's images (covering it and cropping
the centre, as image_folder does), then goes through the run's own evaluation transform: resize to the
model's input, normalise with the checkpoint's mean/std. An image already at the dataset's size is not
resized before that, so a test image written to a file gets exactly the prediction the run gave it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import _rundir as rundir
from .errors import SftError

if TYPE_CHECKING:  # pragma: no cover
    import torch

BATCH = 64


@dataclass
class Prediction:
    image: str
    top: list[tuple[str, float]]  # (class, probability), most probable first

    def as_dict(self) -> dict:
        return {"image": self.image, "top": [{"class": c, "probability": p} for c, p in self.top]}


class Predictor:
    """A stage's model from ``checkpoints/<stage>.pt``, rebuilt through the backbone registry from config.yaml's
    ``backbone`` and ``seed`` (nothing else of the config is read, see ``_backbone``)."""

    def __init__(self, run_dir, stage: str = "finetune"):
        import torch
        from torch import nn

        from . import _checkpoints as checkpoints
        from ._data import BatchTransform
        from ._model import TransferModel

        run = rundir.check(run_dir)
        raw = rundir.config(run)
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
        state = checkpoints.read_model_file(path, "checkpoint", f"delete it and finish the run with "
                                                                f"`sft run --resume {run}`")
        if not all(k in state for k in ("classes", "mean", "std")):
            raise SftError(f"'{path}' is not a sftcore stage checkpoint (needs model, classes, mean and std)")
        backbone = _backbone(run, raw)  # random weights: the checkpoint's replace them
        self.classes = [str(c) for c in state["classes"]]
        model = TransferModel(backbone, nn.Linear(backbone.num_features, len(self.classes)))
        checkpoints.load_model(model, state, path, f"it does not fit the model built from '{run / 'config.yaml'}': "
                               "was config.yaml edited after the run? (sft predict rebuilds linear heads)")
        self.image_shape, input_shape = state.get("image_shape"), state.get("input_shape")
        if self.image_shape is None or input_shape is None:  # checkpoints from before these were recorded
            if not backbone.fixed_input_size:
                raise SftError(f"'{path}' does not record the training image size, and this backbone takes any "
                               "size; rerun the run with this sftcore version to predict with it")
            self.image_shape = input_shape = tuple(backbone.input_size)
        self.image_shape, input_shape = tuple(map(int, self.image_shape)), tuple(map(int, input_shape))
        if self.image_shape[0] not in (1, 3):
            raise SftError(f"run '{run}' trained on {self.image_shape[0]}-channel images; sft predict reads grey "
                           "or colour (1- or 3-channel) images only")
        self.device = torch.device("cpu")
        # the runner's evaluation on a CPU: channels_last, fp32
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.transform = BatchTransform(state["mean"], state["std"], None, self.image_shape, input_shape,
                                        self.device, channels_last=True)

    def __call__(self, images, top_k: int = 5) -> list[Prediction]:
        """Top-``top_k`` classes for each image file; every file is read before any is classified."""
        import torch

        paths = [str(p) for p in images]
        pixels = [read_image(p, self.image_shape) for p in paths]
        k = max(1, min(top_k, len(self.classes)))
        out = []
        with torch.inference_mode():
            for start in range(0, len(pixels), BATCH):
                batch = torch.stack(pixels[start:start + BATCH]).to(self.device)
                probs = self.model(self.transform(batch)).float().softmax(1)
                values, index = probs.topk(k, dim=1)
                for i, (v, c) in enumerate(zip(values.tolist(), index.tolist())):
                    out.append(Prediction(paths[start + i], [(self.classes[j], p) for j, p in zip(c, v)]))
        return out


def _backbone(run: Path, raw: dict):
    """The run's backbone from config.yaml's ``backbone`` and ``seed`` alone. Prediction needs nothing else,
    so a run trained with a dataset, head or regularizer from a plugin not installed here still predicts;
    only the backbone's own plugin must be, and its absence is one line naming the backbone."""
    from . import _components as components
    from . import _config as cfgmod
    from .errors import ConfigError, show
    from ._plugins import get_registry

    registry = get_registry()
    entry = components.entry(raw.get("backbone", cfgmod.RUN_DEFAULTS["backbone"]), "backbone")
    try:
        registry.get("backbones", entry["name"])
    except ConfigError as exc:
        raise ConfigError(f"run '{run}' needs backbone {show(entry['name'])} to rebuild its model, and no installed "
                          f"plugin provides it: install the plugin that registers it (the one the run was trained "
                          f"with) to predict; {exc}") from None
    cfg = {"backbone": components.check(entry, "backbones", "backbone", registry),
           "seed": cfgmod._int(raw.get("seed", cfgmod.RUN_DEFAULTS["seed"]), "seed", 0, cfgmod.MAX_SEED)}
    return components.build_backbone(cfg, registry, random_init=True)


def read_image(path, shape) -> "torch.Tensor":
    """uint8 ``[C, H, W]`` of ``shape`` from a JPEG, PNG, WebP or GIF file.

    As image_folder reads files: EXIF orientation applied, transparency onto white, 16 bits scaled to 8,
    grey from colour with PIL's weights, resized (bicubic) to cover H x W and centre-cropped.
    """
    import torch
    import torch.nn.functional as F
    from torchvision.io import ImageReadMode, decode_image

    p = Path(path)
    if not p.exists():
        raise SftError(f"image '{p}' not found; check the path")
    if p.is_dir():
        raise SftError(f"image '{p}' is a folder; pass image files (a shell glob such as '{p}/*.jpg' works)")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise SftError(f"cannot read image '{p}': {exc.strerror or exc}") from None
    if not data:
        raise SftError(f"image '{p}' is an empty file")
    mode = ImageReadMode.RGB if data[:3] == b"\xff\xd8\xff" else ImageReadMode.RGB_ALPHA  # JPEG has no alpha
    try:
        img = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode,
                           apply_exif_orientation=True)
    except (RuntimeError, ValueError):
        raise SftError(f"cannot decode image '{p}': damaged, or not a JPEG, PNG, WebP or GIF file (what torchvision "
                       "decodes); convert it to PNG or JPEG") from None
    if img.ndim == 4:  # an animated GIF: its first frame
        img = img[0]
    x = img.float()
    if img.dtype != torch.uint8:  # 16-bit PNG
        x = x / 257.0
    if x.shape[0] == 4:
        alpha = x[3:] / 255.0
        x = x[:3] * alpha + 255.0 * (1.0 - alpha)
    x = x.round()
    if shape[0] == 1:
        x = torch.floor((x[0] * 19595 + x[1] * 38470 + x[2] * 7471 + 0x8000) / 65536)[None]  # PIL's "L"
    height, width = shape[1:]
    h0, w0 = x.shape[1:]
    if (h0, w0) != (height, width):
        scale = max(height / h0, width / w0)
        h1, w1 = max(height, round(h0 * scale)), max(width, round(w0 * scale))
        x = F.interpolate(x[None], size=(h1, w1), mode="bicubic", align_corners=False, antialias=True)[0]
        top, left = (h1 - height) // 2, (w1 - width) // 2
        x = x[:, top:top + height, left:left + width].round()
    return x.clamp(0, 255).to(torch.uint8).contiguous()


def format_predictions(predictions: list[Prediction]) -> str:
    lines = []
    for pred in predictions:
        lines.append(pred.image)
        lines.extend(f"  {100 * p:5.1f}%  {c}" for c, p in pred.top)
    return "\n".join(lines)
