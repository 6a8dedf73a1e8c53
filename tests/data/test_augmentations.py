"""The augmentations kind: built-ins checked against torchvision and by their own definitions, per-image
randomness, the per-rank share of a global batch, soft targets in the loop, exact resume, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

import sftcore
import tiny
from sftcore._plugins import components
from sftcore._data.batches import BatchTransform
from sftcore._plugins.manager import get_registry
from sftcore.api import Augment, AugmentBatch

CPU = torch.device("cpu")
BUILTINS = {"crop", "flip", "random_resized_crop", "color_jitter", "trivial_augment", "random_erasing", "mixup",
            "cutmix"}


def build(name, **options):
    return components.build(get_registry(), "augmentations", {"name": name, **options}, "augment[0]")


def batch_of(images, seed=0, targets=None, classes=5, part=None, out_size=None):
    g = torch.Generator().manual_seed(seed)
    y = targets if targets is not None else torch.arange(len(images)) % classes
    return AugmentBatch(images, y, classes, out_size or tuple(images.shape[2:]), (0.5,) * images.shape[1],
                        (0.25,) * images.shape[1], g, part or (0, len(images), len(images)))


def images(n=8, c=3, h=12, w=12, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_every_builtin_is_registered_with_its_options():
    registry = get_registry()
    assert BUILTINS <= {c.name for c in registry.list("augmentations")["augmentations"]}
    assert registry.get("augmentations", "mixup").defaults() == {"alpha": 0.2, "p": 1.0}
    assert registry.get("augmentations", "crop").defaults() == {"padding": 4}


def test_dataset_default_is_crop_then_flip_in_the_short_form():
    assert Augment(crop_padding=2, flip=True).entries() == [{"name": "crop", "padding": 2}, "flip"]
    assert Augment().entries() == []
    crop, flip = tiny.augmentations(Augment(crop_padding=3, flip=True))
    assert crop.moves_pixels_only and flip.moves_pixels_only and crop.padding == 3


@pytest.mark.parametrize("name", sorted(BUILTINS - {"mixup", "cutmix"}))
def test_same_generator_same_images_and_images_differ_per_image(name):
    x = images(16)
    aug = build(name, p=1.0) if name == "random_erasing" else build(name)
    a, b, c = batch_of(x.clone(), 1), batch_of(x.clone(), 1), batch_of(x.clone(), 2)
    aug(a), aug(b), aug(c)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)
    changed = [not torch.equal(a.images[i], x[i]) for i in range(16)]
    assert 0 < sum(changed)
    if name != "flip":  # per-image randomness: the same image twice in a batch comes out two ways
        same = x[:1].repeat(16, 1, 1, 1)
        s = batch_of(same, 3)
        aug(s)
        assert len({s.images[i].sum().item() for i in range(16)}) > 2


@pytest.mark.parametrize("name", sorted(BUILTINS - {"mixup", "cutmix"}))
def test_a_ranks_share_is_augmented_as_in_the_whole_batch(name):
    """Under torch.distributed each rank augments rows [lo, hi) of the global batch exactly as one
    process augments the whole batch."""
    x = images(10)
    aug = build(name, p=1.0) if name == "random_erasing" else build(name)
    whole = batch_of(x.clone(), 5)
    aug(whole)
    for lo, hi in ((0, 5), (5, 10), (3, 7)):
        share = batch_of(x[lo:hi].clone(), 5, targets=torch.arange(lo, hi) % 5, part=(lo, hi, 10))
        aug(share)
        assert torch.allclose(share.images, whole.images[lo:hi], atol=1e-6), (lo, hi)


def test_crop_and_flip_on_uint8_match_the_reference_crop_flip():
    from test_data import reference_crop_flip

    x = torch.randint(0, 256, (6, 3, 7, 9), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    b = batch_of(x.clone(), 123)
    for aug in tiny.augmentations(Augment(crop_padding=2, flip=True)):
        aug(b)
    assert b.images.dtype == torch.uint8
    assert torch.equal(b.images, reference_crop_flip(x, 2, True, seed=123))


def test_flip_probability_bounds():
    x = images(6)
    b = batch_of(x.clone())
    build("flip", p=0.0)(b)
    assert torch.equal(b.images, x)
    b = batch_of(x.clone())
    build("flip", p=1.0)(b)
    assert torch.equal(b.images, x.flip(3))


def test_random_resized_crop_whole_image_is_identity_and_output_has_the_model_size():
    x = images(4, h=10, w=10)
    b = batch_of(x.clone())
    build("random_resized_crop", scale=[1.0, 1.0], ratio=[1.0, 1.0])(b)
    assert torch.allclose(b.images, x, atol=1e-5)
    b = batch_of(images(4, h=10, w=14), out_size=(6, 8))
    build("random_resized_crop", scale=[0.3, 0.6])(b)
    assert b.images.shape == (4, 3, 6, 8)


def test_random_resized_crop_resizes_each_box_as_torchvision_resized_crop_does():
    from sftcore_plugins.augmentations.geometric import resize_boxes

    x = images(5, h=20, w=24, seed=4)
    boxes = [(0, 0, 20, 24), (3, 5, 7, 9), (0, 0, 5, 5), (10, 12, 10, 12), (2, 1, 17, 3)]  # edges, up and down
    for size in ((20, 24), (8, 8), (32, 30)):
        ours = resize_boxes(x, *torch.tensor(boxes, dtype=torch.float).unbind(1), size=size)
        assert torch.equal(ours, resize_boxes(x, torch.tensor(boxes), size=size))
        want = torch.stack([TF.resized_crop(x[i], *box, list(size), antialias=False) for i, box in enumerate(boxes)])
        assert torch.allclose(ours, want, atol=1e-5), size


def test_random_resized_crop_boxes_respect_scale_and_ratio():
    rrc = build("random_resized_crop", scale=[0.25, 0.5], ratio=[0.5, 2.0])
    b = batch_of(images(400, h=40, w=40), 7)
    top, left, h, w = rrc.boxes(b, 40, 40).unbind(1)
    area = h * w / 1600
    assert (area > 0.22).all() and (area < 0.53).all()  # rounding to whole pixels
    assert (w / h >= 0.45).all() and (w / h <= 2.2).all()
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 40).all() and (left + w <= 40).all()
    assert len(set(top.tolist())) > 10  # placed at random


def _torchvision_box(u, h, w, scale, ratio):
    """torchvision's RandomResizedCrop.get_params, with the uniforms it would draw given as ``u``."""
    for k in range(10):
        target = h * w * (scale[0] + (scale[1] - scale[0]) * u[k])
        aspect = math.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[10 + k])
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return [math.floor((h - ch + 1) * u[20]), math.floor((w - cw + 1) * u[21]), ch, cw]
    cw, ch = w, h
    if w / h < min(ratio):
        ch = int(round(cw / min(ratio)))
    elif w / h > max(ratio):
        cw = int(round(ch * max(ratio)))
    return [(h - ch) // 2, (w - cw) // 2, ch, cw]


@pytest.mark.parametrize("scale, ratio, h, w", [([0.35, 1], [3 / 4, 4 / 3], 32, 32), ([0.01, 1], [0.2, 5], 20, 30),
                                                ([0.9, 1], [3, 4], 10, 10), ([0.5, 1], [0.1, 0.2], 30, 30)])
def test_random_resized_crop_boxes_follow_torchvisions_rule_on_the_same_uniforms(scale, ratio, h, w):
    """Ten tries, the first that fits, else the whole image with the ratio clamped (the last two cases)."""
    b = batch_of(images(200, h=2, w=2), 3)
    got = build("random_resized_crop", scale=scale, ratio=ratio).boxes(b, h, w)
    u = torch.rand((200, 22), generator=torch.Generator().manual_seed(3))  # what b.rand(22) drew
    assert got.tolist() == [[float(v) for v in _torchvision_box(row, h, w, scale, ratio)] for row in u.tolist()]


def test_color_jitter_zero_strength_is_identity_and_brightness_is_a_per_image_factor():
    x = images(6)
    b = batch_of(x.clone())
    build("color_jitter", brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)(b)
    assert torch.equal(b.images, x)
    x = torch.full((200, 3, 4, 4), 0.5)
    b = batch_of(x.clone(), 1)
    build("color_jitter", brightness=0.4, contrast=0.0, saturation=0.0)(b)
    factors = b.images[:, 0, 0, 0] / 0.5
    assert factors.min() >= 0.6 - 1e-6 and factors.max() <= 1.4 + 1e-6 and factors.std() > 0.15
    assert torch.allclose(b.images, factors.view(-1, 1, 1, 1) * 0.5)


@pytest.mark.parametrize("op, reference", [
    ("brightness", lambda x, f: TF.adjust_brightness(x, f)),
    ("color", lambda x, f: TF.adjust_saturation(x, f)),
    ("contrast", lambda x, f: TF.adjust_contrast(x, f)),
    ("sharpness", lambda x, f: TF.adjust_sharpness(x, f)),
])
def test_trivial_augment_colour_ops_match_torchvision(op, reference):
    from sftcore_plugins.augmentations.trivial import TrivialAugment

    x = images(3, h=9, w=9, seed=5)
    for factor in (0.3, 1.0, 1.7):
        ours = TrivialAugment._colour(op, x.clone(), torch.full((3,), factor - 1.0))
        assert torch.allclose(ours, torch.stack([reference(xi, factor) for xi in x]), atol=1e-5), factor


def test_trivial_augment_posterize_solarize_equalize_autocontrast_match_torchvision():
    from sftcore_plugins.augmentations.trivial import TrivialAugment

    u8 = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    x = u8.float() / 255
    post = TrivialAugment._colour("posterize", x.clone(), torch.tensor([2.0, 5.0, 8.0]))
    want = torch.stack([TF.posterize(u8[i], b) for i, b in enumerate((2, 5, 8))]).float() / 255
    assert torch.allclose(post, want, atol=1e-6)
    sol = TrivialAugment._colour("solarize", x.clone(), torch.tensor([0.2, 0.5, 1.0]))
    want = torch.stack([TF.solarize(x[i], t) for i, t in enumerate((0.2, 0.5, 1.0))])
    assert torch.allclose(sol, want)
    assert torch.allclose(TrivialAugment._colour("equalize", x.clone(), torch.zeros(3)), TF.equalize(x))
    assert torch.allclose(TrivialAugment._colour("autocontrast", x.clone(), torch.zeros(3)), TF.autocontrast(x))


def test_trivial_augment_sorts_the_batch_by_op_and_each_op_is_torchvisions(monkeypatch):
    """The whole __call__ (sorted slices, the shared ImageEnhance blend, images put back in place), with
    each image's op and strength fixed, against torchvision image by image."""
    from sftcore_plugins.augmentations import trivial

    refs = {"identity": lambda x, m: x, "brightness": lambda x, m: TF.adjust_brightness(x, 1 + m),
            "color": lambda x, m: TF.adjust_saturation(x, 1 + m), "contrast": lambda x, m: TF.adjust_contrast(x, 1 + m),
            "sharpness": lambda x, m: TF.adjust_sharpness(x, 1 + m),
            "posterize": lambda x, m: TF.posterize((x * 255).round().to(torch.uint8), int(m)).float() / 255,
            "solarize": lambda x, m: TF.solarize(x, m), "autocontrast": lambda x, m: TF.autocontrast(x),
            "equalize": lambda x, m: TF.equalize(x)}
    plan = [(name, m) for m in (0.5, -0.4) for name in refs]
    plan = [(n, {"posterize": 3.0 if m > 0 else 6.0, "solarize": 0.3 if m > 0 else 0.7}.get(n, m)) for n, m in plan]
    plan = plan[::2] + plan[1::2]  # the ops interleaved, so sorting moves images
    u8 = torch.randint(0, 256, (len(plan), 3, 9, 9), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    x = u8.float() / 255
    ta = build("trivial_augment")
    ops = torch.tensor([trivial.OPS.index(n) for n, _ in plan])
    monkeypatch.setattr(ta, "strengths", lambda batch: (ops, torch.tensor([m for _, m in plan])))
    b = batch_of(x.clone())
    ta(b)
    for i, (name, m) in enumerate(plan):
        assert torch.allclose(b.images[i], refs[name](x[i], m), atol=1e-5), (i, name, m)


def test_equalize_after_an_augmentation_that_leaves_0_to_1():
    """random_erasing's noise is outside [0, 1]; equalize reads such pixels as 0 or 255, not as an index."""
    from sftcore_plugins.augmentations.color import equalize

    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.5
    assert torch.equal(equalize(x), TF.equalize(x.clamp(0, 1)))
    b = batch_of(torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1)), 2)
    build("random_erasing", p=1.0)(b)
    build("trivial_augment")(b)
    assert torch.isfinite(b.images).all()


def test_trivial_augment_geometric_ops_move_pixels_as_defined():
    from sftcore_plugins.augmentations import trivial

    x = images(3, h=8, w=8, seed=2)
    ops = torch.tensor([trivial.OPS.index(n) for n in ("translate_x", "translate_y", "rotate")])
    maps = trivial._inverse_maps(ops, torch.tensor([3.0, -2.0, 90.0]), 8, 8)
    out = trivial.sample(x, maps, (8, 8), mode="nearest")
    shifted = torch.zeros_like(x[0])
    shifted[:, :, 3:] = x[0][:, :, :5]
    assert torch.equal(out[0], shifted)  # right by 3 pixels, zeros come in
    up = torch.zeros_like(x[1])
    up[:, :6] = x[1][:, 2:]
    assert torch.equal(out[1], up)  # up by 2
    assert torch.equal(out[2], torch.rot90(x[2], 1, (1, 2)))  # a quarter turn counter-clockwise


TORCHVISION_GEOMETRIC = {"shear_x": "ShearX", "shear_y": "ShearY", "translate_x": "TranslateX",
                         "translate_y": "TranslateY", "rotate": "Rotate"}


@pytest.mark.parametrize("op", list(TORCHVISION_GEOMETRIC))
def test_trivial_augment_geometric_ops_match_torchvision_at_every_bin_and_sign(op):
    """torchvision's own op (``_apply_op``, nearest, fill 0) at each of the 31 strengths and both signs: shear
    about the corner of pixel (0, 0) and translation by int(strength) equal it pixel for pixel; rotation
    differs only where a pixel's source lies on a rounding tie (at most 0.2 % of the pixels; on a square image,
    where a quarter turn maps pixel centres onto pixel centres: on a 32 x 24 one whole columns are ties)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.autoaugment import _apply_op

    from sftcore_plugins.augmentations import trivial

    h, w = (32, 32) if op == "rotate" else (32, 24)
    x = (images(1, h=h, w=w, seed=5) * 255).round() / 255
    index = trivial.OPS.index(op)
    worst = 0.0
    for strength in trivial._magnitudes(31)[index].tolist():
        for m in (strength, -strength):
            maps = trivial._inverse_maps(torch.tensor([index]), torch.tensor([m]), h, w)
            ours = trivial.sample(x, maps, (h, w), mode="nearest")[0]
            theirs = _apply_op((x[0] * 255).round().to(torch.uint8), TORCHVISION_GEOMETRIC[op], m,
                               interpolation=InterpolationMode.NEAREST, fill=None).float() / 255
            worst = max(worst, ((ours - theirs).abs() > 1e-6).any(0).float().mean().item())
    assert worst <= (0.002 if op == "rotate" else 0.0), worst


def test_trivial_augment_uses_every_op_and_stays_in_range():
    x = images(300, h=8, w=8)
    b = batch_of(x.clone(), 9)
    build("trivial_augment")(b)
    assert b.images.min() >= 0 and b.images.max() <= 1
    unchanged = sum(torch.equal(b.images[i], x[i]) for i in range(300))
    assert 5 < unchanged < 80  # identity is 1 of 14 ops (and a few strength-0 bins)


def test_random_erasing_fills_one_box_with_noise():
    x = torch.full((50, 3, 16, 16), 0.5)
    b = batch_of(x.clone(), 3)
    build("random_erasing", p=1.0, scale=[0.1, 0.2])(b)
    changed = (b.images != 0.5).any(1)  # [B, H, W]
    fractions = changed.float().mean((1, 2))
    assert (fractions > 0.05).all() and (fractions < 0.25).all()
    for i in range(5):  # the changed pixels form one rectangle
        rows, cols = changed[i].any(1).nonzero(), changed[i].any(0).nonzero()
        box = changed[i][rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.float().mean() > 0.95
    b = batch_of(x.clone(), 3)
    build("random_erasing", p=0.0)(b)
    assert torch.equal(b.images, x)


def test_mixup_blends_images_and_targets_with_beta_weights():
    from sftcore_plugins.augmentations.mixing import beta

    alpha = 0.4
    lam = beta(batch_of(images(4000, h=1, w=1), 11), alpha)
    mean, var = lam.mean().item(), lam.var().item()
    assert abs(mean - 0.5) < 0.02 and abs(var - 1 / (4 * (2 * alpha + 1))) < 0.01  # Beta(a, a)
    lam2 = beta(batch_of(images(4000, h=1, w=1), 11), 3.0)
    assert abs(lam2.var().item() - 1 / (4 * 7)) < 0.005
    x, y = images(6), torch.tensor([0, 1, 2, 3, 4, 0])
    b = batch_of(x.clone(), 2, targets=y)
    build("mixup", alpha=alpha)(b)
    t = b.targets
    assert t.shape == (6, 5) and torch.allclose(t.sum(1), torch.ones(6))
    weight = t[torch.arange(6), y]  # each image's own share (its partner's label differs here, except 0/5)
    for i in (1, 2, 3, 4):
        want = weight[i] * x[i] + (1 - weight[i]) * x[5 - i]
        assert torch.allclose(b.images[i], want, atol=1e-6)


def test_cutmix_targets_follow_the_pasted_area():
    x = torch.zeros(8, 1, 10, 10)
    x[4:] = 1.0  # the mirrored partner of image i < 4 is all ones
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    b = batch_of(x.clone(), 6, targets=y, classes=2)
    build("cutmix", alpha=1.0)(b)
    pasted = b.images[:4].mean((1, 2, 3))  # fraction of pixels from the partner
    assert torch.allclose(b.targets[:4, 1], pasted, atol=1e-6)
    assert torch.allclose(b.targets.sum(1), torch.ones(8))


def test_transform_runs_pixel_moves_on_uint8_then_float_ops_then_normalises():
    crop, jitter = build("crop", padding=1), build("color_jitter", brightness=0.0, contrast=0.0, saturation=0.0)
    tf = BatchTransform((0.5,) * 3, (0.25,) * 3, [crop, jitter], (3, 6, 6), (3, 6, 6), CPU, num_classes=5)
    assert tf.on_uint8 == [crop] and tf.on_float == [jitter] and not tf.mixes_labels
    x = torch.randint(0, 256, (4, 3, 6, 6), dtype=torch.uint8)
    plain = BatchTransform((0.5,) * 3, (0.25,) * 3, [crop], (3, 6, 6), (3, 6, 6), CPU)
    a = tf(x, torch.Generator().manual_seed(0))
    b = plain(x, torch.Generator().manual_seed(0))
    assert torch.allclose(a, b, atol=1e-5)  # an identity float op changes nothing but the path
    mixing = BatchTransform((0.5,) * 3, (0.25,) * 3, [build("mixup")], (3, 6, 6), (3, 6, 6), CPU, num_classes=5)
    inputs, targets = mixing.augmented(x, torch.arange(4), torch.Generator().manual_seed(0))
    assert mixing.mixes_labels and targets.shape == (4, 5) and inputs.shape == (4, 3, 6, 6)
    assert torch.equal(mixing(x), plain(x))  # evaluation: no generator, no augmentation


def test_the_stage_config_overrides_the_dataset_default(tmp_path):
    from sftcore._config import resolve as cfgmod
    from sftcore._run.pipeline import Pipeline

    cfg = cfgmod.resolve(tiny.config(finetune={"augment": ["flip"]}, pretrain={"augment": []}), get_registry())
    pipe = Pipeline(cfg, None, progress=False, echo=None)
    data = pipe.stage_data("finetune", pipe.build_backbone(), 0)
    names = lambda stage: [type(a).__name__ for a in pipe._augmentations(data, pipe.config.stage(stage), stage)]  # noqa: E731
    assert names("finetune") == ["Flip"]
    assert names("baseline") == ["Flip"]  # the baseline trains as finetune does
    assert names("pretrain") == []
    assert [type(a).__name__ for a in pipe._augmentations(data, None, "x")] == ["Crop", "Flip"]  # shapes' default


@pytest.mark.slow
def test_mixup_with_p0_trains_exactly_like_no_mixup():
    """Soft one-hot targets give the loss (and so the gradients) of the labels."""
    plain = sftcore.run(tiny.config(finetune={"augment": ["flip"]}, baseline=False, pretrain=False))
    mixed = sftcore.run(tiny.config(finetune={"augment": ["flip", {"name": "mixup", "p": 0.0}]}, baseline=False,
                                    pretrain=False))
    a, b = plain["finetune"], mixed["finetune"]
    # the float path normalises as x/255/std - mean/std instead of one multiply-add: rounding differs by
    # ~1e-7 per pixel, and two epochs of SGD amplify it a little
    assert math.isclose(a["train_loss"], b["train_loss"], rel_tol=2e-3)
    assert abs(a["train_accuracy"] - b["train_accuracy"]) <= 0.05
    logits, y = torch.randn(16, 5, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 5
    soft = torch.nn.functional.one_hot(y, 5).float()
    for smoothing in (0.0, 0.1):
        hard_loss = torch.nn.functional.cross_entropy(logits, y, label_smoothing=smoothing)
        assert torch.allclose(torch.nn.functional.cross_entropy(logits, soft, label_smoothing=smoothing), hard_loss)


@pytest.mark.slow
def test_train_accuracy_under_mixup_counts_the_larger_share():
    strong = sftcore.run(tiny.config(finetune={"augment": [{"name": "mixup", "alpha": 1.0}], "epochs": 3},
                                     baseline=False, pretrain=False))
    assert 0.0 <= strong["finetune"]["train_accuracy"] <= 1.0
    assert strong["finetune"]["train_loss"] > 0


@pytest.mark.slow
def test_ctrl_c_mid_epoch_with_strong_augmentation_resumes_exactly(tmp_path, monkeypatch):
    from test_resume import CFG, StopAfter, assert_same_weights

    from sftcore._run import runner
    from sftcore.errors import Interrupted

    cfg = {**CFG, "finetune": {**CFG["finetune"], "augment": [
        {"name": "random_resized_crop", "scale": [0.35, 1]}, "flip", "trivial_augment", "random_erasing",
        {"name": "mixup", "alpha": 0.4}, "cutmix"]}}
    reference = sftcore.run(cfg, out=tmp_path / "ref")
    with monkeypatch.context() as m:
        m.setattr(runner, "StopSignals", lambda **_: StopAfter(9))  # mid-finetune
        with pytest.raises(Interrupted):
            sftcore.run(cfg, out=tmp_path / "cut")
    resumed = sftcore.run(resume=tmp_path / "cut")
    assert resumed["finetune"]["test_accuracy"] == reference["finetune"]["test_accuracy"]
    assert tiny.without_seconds(tiny.read_metrics(tmp_path / "cut")) == \
        tiny.without_seconds(tiny.read_metrics(tmp_path / "ref"))
    assert_same_weights(tmp_path / "ref", tmp_path / "cut")


def test_augment_chunk_auto_takes_small_batches_together_and_nothing_else():
    from sftcore._data.batches import augment_chunk

    def tf(augs, hw=32):
        return BatchTransform((0.5,) * 3, (0.25,) * 3, augs, (3, hw, hw), (3, hw, hw), CPU)

    strong = [build("random_resized_crop"), build("mixup")]
    assert augment_chunk("auto", tf(strong), 100, 1) == 4  # CIFAR-sized: 100 x 32 x 32 px per batch
    assert augment_chunk("auto", tf(strong, 64), 64, 1) == 2
    assert augment_chunk("auto", tf(strong, 224), 32, 1) == 1
    assert augment_chunk(3, tf(strong, 224), 32, 1) == 3
    assert augment_chunk(3, tf([build("crop"), build("flip")]), 100, 1) == 1  # uint8 gathers only: no gain
    assert augment_chunk(3, tf(strong), 100, 2) == 1  # each rank draws its rows of each global batch


def test_batches_augmented_together_are_the_rows_of_their_concatenation():
    from sftcore._data.batches import augment_together

    tf = BatchTransform((0.5,) * 3, (0.25,) * 3, [build("random_resized_crop"), build("trivial_augment")],
                        (3, 12, 12), (3, 12, 12), CPU, num_classes=5)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 256, (n, 3, 12, 12), dtype=torch.uint8, generator=g), torch.arange(n) % 5)
               for n in (6, 6, 3)]
    done = augment_together(tf, batches, torch.Generator().manual_seed(4))
    whole, _ = tf.augmented(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]),
                            torch.Generator().manual_seed(4))
    assert [len(x) for x, _ in done] == [6, 6, 3]
    assert torch.equal(torch.cat([x for x, _ in done]), whole)
    assert all(torch.equal(t, b[1]) for (_, t), b in zip(done, batches))


@pytest.mark.slow
@pytest.mark.parametrize("looks", [3, 5, 6])  # after batches 2, 4, 5 of 6
def test_ctrl_c_inside_an_augmentation_chunk_resumes_exactly(tmp_path, monkeypatch, looks):
    """Three batches are augmented as one: a stop before batch 2, 4 or 5 (of 6 in the epoch) is inside a
    chunk, whose draws the checkpoint records from the chunk's start; the resumed run redraws the chunk
    and skips the batches that ran."""
    from test_resume import StopAfter, assert_same_weights

    from sftcore._run import runner
    from sftcore.errors import Interrupted

    cfg = tiny.config(pretrain=False, baseline=False, finetune={
        "epochs": 2, "batch_size": 4, "augment_chunk": 3,
        "augment": [{"name": "random_resized_crop", "scale": [0.35, 1]}, "trivial_augment", "mixup"]})
    reference = sftcore.run(cfg, out=tmp_path / "ref")
    with monkeypatch.context() as m:
        m.setattr(runner, "StopSignals", lambda **_: StopAfter(looks))
        with pytest.raises(Interrupted):
            sftcore.run(cfg, out=tmp_path / "cut")
    state = torch.load(tmp_path / "cut" / "checkpoints" / "finetune-last.pt", weights_only=False)
    assert state["generator_batch"] == state["batch"] // 3 * 3  # batch 4 was drawn with 3 and 5
    resumed = sftcore.run(resume=tmp_path / "cut")
    assert resumed["finetune"]["test_accuracy"] == reference["finetune"]["test_accuracy"]
    assert tiny.without_seconds(tiny.read_metrics(tmp_path / "cut")) == \
        tiny.without_seconds(tiny.read_metrics(tmp_path / "ref"))
    assert_same_weights(tmp_path / "ref", tmp_path / "cut", stages=("finetune",))


@pytest.mark.parametrize("value, message", [
    ("[fliip]", "config: finetune.augment[0]: unknown augmentation 'fliip'"),
    ("[{name: random_resized_crop, scale: [0, 1]}]", "config: finetune.augment[0]: scale must be"),
    ("[{name: random_resized_crop, scale: [0.5, 1.5]}]", "config: finetune.augment[0]: scale must be"),
    ("[{name: mixup, alpha: 0}]", "config: finetune.augment[0]: alpha must be a number > 0"),
    ("[{name: cutmix, alpha: -1}]", "config: finetune.augment[0]: alpha must be a number > 0"),
    ("[{name: mixup, alpha: 1e300}]", "config: finetune.augment[0]: alpha must be a number > 0 and <= 1000"),
    ("[{name: cutmix, alpha: .inf}]", "config: finetune.augment[0]: alpha must be a number > 0 and <= 1000"),
    ("[{name: flip, p: 2}]", "config: finetune.augment[0]: p must be a probability"),
    ("flip", "config: finetune.augment must be a list"),
])
def test_bad_augmentations_are_one_line_exit_2(tmp_path, value, message):
    line = _refused(tmp_path, f"finetune.augment={value}")
    assert message in line, line


def _refused(tmp_path, setting: str) -> str:
    """The one error line of ``sft config show`` on the tiny config with ``--set setting``; exit code 2."""
    cfg = tiny.write_yaml(tmp_path / "c.yaml", tiny.config())
    result = tiny.invoke("config", "show", cfg, "--set", setting)
    assert result.exit_code == 2
    return tiny.one_error_line(result)


@pytest.mark.parametrize("value, message", [
    ("0", "config: finetune.augment_chunk must be >= 1, got 0"),
    ("65", "config: finetune.augment_chunk must be <= 64, got 65"),
    ("fast", "config: finetune.augment_chunk must be an integer or auto, got 'fast'"),
])
def test_a_bad_augment_chunk_is_one_line_exit_2(tmp_path, value, message):
    assert _refused(tmp_path, f"finetune.augment_chunk={value}") == f"sft: error: {message}"


@pytest.mark.slow
def test_a_factory_that_returns_no_augmentation_is_one_line(plugin):
    from sftcore.errors import PluginError

    class Plugin:
        @staticmethod
        @sftcore.hookimpl
        def register_augmentations(register):
            register("not_an_augmentation", lambda: (lambda batch: None), "returns a plain function")

    plugin(Plugin, "bad-aug")
    with pytest.raises(PluginError, match="returned function, not an sftcore.api.Augmentation"):
        sftcore.run(tiny.config(finetune={"augment": ["not_an_augmentation"]}, pretrain=False, baseline=False))
