"""The data path: few-label subsets, the validation hold-out, per-batch transforms (checked
against slow per-sample reference implementations) and shuffled batches."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from sftcore.api import Augment, FileSet, ImageSet
import tiny
from sftcore._data.batches import Batches, BatchTransform, few_label_index, holdout_index

CPU = torch.device("cpu")
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def labels_of(sizes: list[int], seed: int = 0) -> torch.Tensor:
    """Labels with ``sizes[c]`` examples of class c, shuffled."""
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


def images(n: int = 6, c: int = 3, h: int = 8, w: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x.float() / 255 - m) / s  # float input: already resized, not rounded


# --------------------------------------------------------------------------- few labels
def test_few_label_index_picks_exactly_n_per_class():
    labels = labels_of([10, 7, 12, 5])
    idx = few_label_index(labels, seed=0, labels_per_class=4)
    assert idx.dtype == torch.int64 and len(idx) == 16
    assert torch.equal(idx, torch.sort(idx).values) and len(set(idx.tolist())) == 16
    assert Counter(labels[idx].tolist()) == {0: 4, 1: 4, 2: 4, 3: 4}


def test_few_label_index_is_seeded_and_deterministic():
    labels = labels_of([20, 20, 20])
    a = few_label_index(labels, seed=3, labels_per_class=5)
    b = few_label_index(labels, seed=3, labels_per_class=5)
    c = few_label_index(labels, seed=4, labels_per_class=5)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert Counter(labels[c].tolist()) == {0: 5, 1: 5, 2: 5}
    # a subset of 5 is the start of a subset of 8 with the same seed: more labels only add
    d = few_label_index(labels, seed=3, labels_per_class=8)
    assert set(a.tolist()) <= set(d.tolist())


def test_few_label_index_more_than_a_class_has_keeps_the_whole_class():
    labels = labels_of([3, 10])
    idx = few_label_index(labels, seed=0, labels_per_class=5)
    assert Counter(labels[idx].tolist()) == {0: 3, 1: 5}


def test_few_label_index_without_a_limit_is_none():
    assert few_label_index(labels_of([3, 3]), seed=0) is None


@pytest.mark.parametrize("fraction, sizes, expected", [
    (0.1, [30, 10, 3], {0: 3, 1: 1, 2: 1}),       # at least one per class
    (0.3, [10, 7, 1], {0: 3, 1: 2, 2: 1}),        # 2.1 -> 2
    (0.5, [9, 3, 20], {0: 4, 1: 2, 2: 10}),       # round half to even: 4.5 -> 4, 1.5 -> 2
    (0.8, [5, 6], {0: 4, 1: 5}),                  # 4.8 -> 5
    (1.0, [4, 2], {0: 4, 1: 2}),
])
def test_few_label_index_fraction_rounds_per_class(fraction, sizes, expected):
    labels = labels_of(sizes)
    idx = few_label_index(labels, seed=0, fraction=fraction)
    assert Counter(labels[idx].tolist()) == expected


def test_few_label_index_works_on_labels_with_gaps():
    labels = torch.tensor([7, 2, 7, 7, 2, 9, 9, 9, 9])
    idx = few_label_index(labels, seed=1, labels_per_class=2)
    assert Counter(labels[idx].tolist()) == {2: 2, 7: 2, 9: 2}


# --------------------------------------------------------------------------- hold-out
def test_holdout_is_stratified_disjoint_and_covers_everything():
    sizes = [20, 10, 5, 2, 1]
    labels = labels_of(sizes, seed=2)
    train, val = holdout_index(labels, 0.2, seed=0)
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(len(labels)))
    assert torch.equal(train, torch.sort(train).values) and torch.equal(val, torch.sort(val).values)
    assert Counter(labels[val].tolist()) == {0: 4, 1: 2, 2: 1, 3: 1}  # 1 -> at least one; class 4 has one
    assert Counter(labels[train].tolist()) == {0: 16, 1: 8, 2: 4, 3: 1, 4: 1}


def test_holdout_keeps_at_least_one_training_example_per_class():
    labels = labels_of([2, 3, 4])
    train, val = holdout_index(labels, 0.9, seed=0)
    assert Counter(labels[train].tolist()) == {0: 1, 1: 1, 2: 1}
    assert Counter(labels[val].tolist()) == {0: 1, 1: 2, 2: 3}


def test_holdout_seeded_and_zero_fraction():
    labels = labels_of([10, 10])
    a = holdout_index(labels, 0.3, seed=1)
    b = holdout_index(labels, 0.3, seed=1)
    c = holdout_index(labels, 0.3, seed=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    train, val = holdout_index(labels, 0.0, seed=0)
    assert len(val) == 0 and torch.equal(train, torch.arange(20))


# --------------------------------------------------------------------------- transforms
def test_eval_transform_normalises_exactly():
    x = images()
    tf = BatchTransform(MEAN, STD, tiny.augmentations(Augment(crop_padding=4, flip=True)), (3, 8, 10), (3, 8, 10), CPU)
    out = tf(x)  # no generator: no augmentation even though the dataset asks for some
    assert out.dtype == torch.float32 and out.shape == (6, 3, 8, 10)
    torch.testing.assert_close(out, normalise(x, MEAN, STD), rtol=1e-5, atol=1e-5)
    assert torch.equal(tf(x), out)  # deterministic
    assert tf.mean == list(MEAN) and tf.std == list(STD)


def test_extreme_pixels_map_to_the_normalised_range():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 2, 2).contiguous()
    out = BatchTransform((0.5,) * 3, (0.5,) * 3, None, (3, 2, 2), (3, 2, 2), CPU)(x)
    torch.testing.assert_close(out[0], torch.full((3, 2, 2), -1.0))
    torch.testing.assert_close(out[1], torch.full((3, 2, 2), 1.0))


def reference_crop_flip(x: torch.Tensor, pad: int, flip: bool, seed: int) -> torch.Tensor:
    """Per sample, with the same random draws as the batched version: row offsets, column offsets, flips."""
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = x.shape
    oy = ox = torch.zeros(b, 1, dtype=torch.long)
    if pad:
        oy = torch.randint(0, 2 * pad + 1, (b, 1), generator=g)
        ox = torch.randint(0, 2 * pad + 1, (b, 1), generator=g)
    flips = torch.rand((b, 1), generator=g) < 0.5 if flip else torch.zeros(b, 1, dtype=torch.bool)
    out = torch.empty_like(x)
    for i in range(b):
        padded = torch.zeros(c, h + 2 * pad, w + 2 * pad, dtype=x.dtype)
        padded[:, pad:pad + h, pad:pad + w] = x[i]
        crop = padded[:, oy[i, 0]:oy[i, 0] + h, ox[i, 0]:ox[i, 0] + w]
        out[i] = crop.flip(-1) if flips[i, 0] else crop
    return out


@pytest.mark.parametrize("pad, flip", [(3, False), (0, True), (2, True), (5, True)])
def test_crop_and_flip_match_a_per_sample_reference(pad, flip):
    x = images(n=16, h=7, w=9, seed=1)
    tf = BatchTransform((0.0,) * 3, (1 / 255,) * 3, tiny.augmentations(Augment(crop_padding=pad, flip=flip)), (3, 7, 9), (3, 7, 9), CPU)
    out = tf(x, torch.Generator().manual_seed(123))  # mean 0, std 1/255: pixels come back as they were
    assert out.shape == (16, 3, 7, 9)
    expected = reference_crop_flip(x, pad, flip, seed=123).float()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-3)


def test_crop_and_flip_of_a_non_contiguous_batch():
    x = images(n=8, h=6, w=6, seed=4)
    tf = BatchTransform(MEAN, STD, tiny.augmentations(Augment(crop_padding=2, flip=True)), (3, 6, 6), (3, 6, 6), CPU)
    strided = x.contiguous(memory_format=torch.channels_last)
    assert not strided.is_contiguous()
    a = tf(x, torch.Generator().manual_seed(9))
    b = tf(strided, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    grey = images(n=8, c=1, h=6, w=6).expand(-1, 3, -1, -1)  # a broadcast view
    tf_grey = BatchTransform(MEAN, STD, tiny.augmentations(Augment(crop_padding=2, flip=True)), (3, 6, 6), (3, 6, 6), CPU)
    torch.testing.assert_close(tf_grey(grey, torch.Generator().manual_seed(9)),
                               tf_grey(grey.contiguous(), torch.Generator().manual_seed(9)))


def test_crop_pads_with_zeros_at_a_known_offset():
    x = torch.full((1, 1, 4, 4), 200, dtype=torch.uint8)
    tf = BatchTransform((0.0,), (1 / 255,), tiny.augmentations(Augment(crop_padding=2)), (1, 4, 4), (1, 4, 4), CPU)
    seen = set()
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        gg = torch.Generator().manual_seed(seed)  # the same draws, re-derived
        oy = int(torch.randint(0, 5, (1, 1), generator=gg))
        ox = int(torch.randint(0, 5, (1, 1), generator=gg))
        out = tf(x, g).round().to(torch.uint8)[0, 0]
        # the image sits at rows/cols [2 - o, 6 - o) of the crop window, zero elsewhere
        expected = torch.zeros(4, 4, dtype=torch.uint8)
        expected[max(0, 2 - oy):6 - oy, max(0, 2 - ox):6 - ox] = 200
        assert torch.equal(out, expected), (seed, oy, ox)
        seen.add((oy, ox))
    assert len(seen) > 10 and ((0, 0) in seen or (4, 4) in seen or (0, 4) in seen)  # offsets really vary


def test_flip_flips_about_half_and_exactly():
    x = torch.arange(6, dtype=torch.uint8).view(1, 1, 1, 6).expand(400, 1, 3, 6).contiguous()
    tf = BatchTransform((0.0,), (1 / 255,), tiny.augmentations(Augment(flip=True)), (1, 3, 6), (1, 3, 6), CPU)
    out = tf(x, torch.Generator().manual_seed(0)).round()
    same = (out == x.float()).flatten(1).all(1)
    flipped = (out == x.float().flip(-1)).flatten(1).all(1)
    assert bool((same ^ flipped).all())  # each image is either itself or its mirror image
    assert 160 < int(flipped.sum()) < 240


def test_same_generator_seed_same_batch_and_different_seed_differs():
    x = images(n=32, seed=3)
    tf = BatchTransform(MEAN, STD, tiny.augmentations(Augment(crop_padding=4, flip=True)), (3, 8, 10), (3, 8, 10), CPU)
    a = tf(x, torch.Generator().manual_seed(7))
    b = tf(x, torch.Generator().manual_seed(7))
    c = tf(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, tf(x))  # augmented differs from eval


def test_no_augmentation_with_a_generator_is_plain_normalisation():
    x = images()
    tf = BatchTransform(MEAN, STD, tiny.augmentations(Augment()), (3, 8, 10), (3, 8, 10), CPU)
    torch.testing.assert_close(tf(x, torch.Generator().manual_seed(0)), normalise(x, MEAN, STD))
    tf_none = BatchTransform(MEAN, STD, None, (3, 8, 10), (3, 8, 10), CPU)
    torch.testing.assert_close(tf_none(x, torch.Generator().manual_seed(0)), normalise(x, MEAN, STD))


def test_grey_to_colour_repeats_the_channel():
    x = images(c=1)
    tf = BatchTransform(MEAN, STD, None, (1, 8, 10), (3, 8, 10), CPU)
    out = tf(x)
    assert out.shape == (6, 3, 8, 10)
    torch.testing.assert_close(out, normalise(x.expand(-1, 3, -1, -1), MEAN, STD))
    # a single-channel mean/std is repeated for three channels
    tf1 = BatchTransform((0.5,), (0.25,), None, (1, 8, 10), (3, 8, 10), CPU)
    assert tf1.mean == [0.5] * 3 and tf1.std == [0.25] * 3
    torch.testing.assert_close(tf1(x), normalise(x.expand(-1, 3, -1, -1), (0.5,) * 3, (0.25,) * 3))


def test_colour_to_grey_averages_channels_and_statistics():
    x = images(c=3)
    tf = BatchTransform(MEAN, STD, None, (3, 8, 10), (1, 8, 10), CPU)
    out = tf(x)
    assert out.shape == (6, 1, 8, 10)
    assert tf.mean == [pytest.approx(0.5)] and tf.std == [pytest.approx(0.25)]
    expected = (x.float().mean(1, keepdim=True) / 255 - 0.5) / 0.25
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("in_hw, out_hw", [((8, 10), (16, 16)), ((32, 32), (12, 12)), ((8, 10), (8, 5))])
def test_resize_to_the_backbone_input(in_hw, out_hw):
    x = images(h=in_hw[0], w=in_hw[1])
    tf = BatchTransform(MEAN, STD, None, (3, *in_hw), (3, *out_hw), CPU)
    out = tf(x)
    assert out.shape == (6, 3, *out_hw)
    down = out_hw[0] < in_hw[0]
    resized = F.interpolate(x.float(), size=out_hw, mode="bilinear", align_corners=False, antialias=down)
    torch.testing.assert_close(out, normalise(resized, MEAN, STD), rtol=1e-4, atol=1e-4)
    # a constant image stays constant through the resize
    flat = torch.full((1, 3, *in_hw), 128, dtype=torch.uint8)
    torch.testing.assert_close(tf(flat), normalise(torch.full((1, 3, *out_hw), 128.0), MEAN, STD))


def test_augment_then_resize_keeps_the_output_shape():
    x = images(n=4, h=8, w=10)
    tf = BatchTransform(MEAN, STD, tiny.augmentations(Augment(crop_padding=2, flip=True)), (3, 8, 10), (1, 20, 20), CPU)
    out = tf(x, torch.Generator().manual_seed(0))
    assert out.shape == (4, 1, 20, 20) and torch.isfinite(out).all()


def test_channels_last_output():
    x = images()
    plain = BatchTransform(MEAN, STD, None, (3, 8, 10), (3, 8, 10), CPU)
    cl = BatchTransform(MEAN, STD, None, (3, 8, 10), (3, 8, 10), CPU, channels_last=True)
    out = cl(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert not plain(x).is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, plain(x))


# --------------------------------------------------------------------------- batches
def image_set(n: int, classes: int = 3) -> ImageSet:
    return ImageSet(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous(),
                    torch.arange(n) % classes)


def epoch_ids(batches: Batches, epoch: int) -> list[list[int]]:
    batches.set_epoch(epoch)
    out = []
    for x, y in batches:
        assert x.dtype == torch.uint8 and x.shape[1:] == (1, 2, 2)
        ids = x[:, 0, 0, 0].long()
        assert torch.equal(y, ids % 3)  # images and labels stay paired
        out.append(ids.tolist())
    return out


@pytest.mark.parametrize("n, bs", [(20, 4), (23, 4), (3, 8), (8, 8)])
def test_batches_cover_every_index_once_per_epoch(n, bs):
    b = Batches(image_set(n), bs, CPU, shuffle=True, seed=0)
    for epoch in range(3):
        ids = epoch_ids(b, epoch)
        flat = [i for batch in ids for i in batch]
        assert sorted(flat) == list(range(n))
        assert all(len(batch) == bs for batch in ids[:-1]) and 1 <= len(ids[-1]) <= bs
        assert len(ids) == len(b) == math.ceil(n / bs)


@pytest.mark.parametrize("n, bs", [(9, 4), (17, 8), (5, 2)])
def test_shuffled_batches_drop_a_final_batch_of_one(n, bs):
    b = Batches(image_set(n), bs, CPU, shuffle=True, seed=0)
    dropped = []
    for epoch in range(4):
        ids = epoch_ids(b, epoch)
        flat = [i for batch in ids for i in batch]
        assert len(flat) == n - 1 and len(set(flat)) == n - 1
        assert min(len(batch) for batch in ids) >= 2
        dropped.append(next(iter(set(range(n)) - set(flat))))
    assert len(set(dropped)) > 1  # not always the same example
    one = Batches(image_set(1), 4, CPU, shuffle=True)
    assert epoch_ids(one, 0) == [[0]]  # a one-example dataset still trains


@pytest.mark.parametrize("n, bs", [(9, 4), (17, 8)])
def test_len_counts_the_batches_a_shuffled_epoch_yields(n, bs):
    b = Batches(image_set(n), bs, CPU, shuffle=True, seed=0)
    assert len(b) == len(list(b))


def test_unshuffled_batches_are_in_order_and_keep_every_example():
    b = Batches(image_set(9), 4, CPU, shuffle=False)
    assert epoch_ids(b, 0) == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
    assert epoch_ids(b, 5) == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
    assert len(b) == 3


def test_order_changes_with_the_epoch_and_repeats_for_the_same_seed_and_epoch():
    a = Batches(image_set(40), 8, CPU, shuffle=True, seed=3)
    b = Batches(image_set(40), 8, CPU, shuffle=True, seed=3)
    c = Batches(image_set(40), 8, CPU, shuffle=True, seed=4)
    e0, e1 = epoch_ids(a, 0), epoch_ids(a, 1)
    assert e0 != e1
    assert epoch_ids(b, 1) == e1 and epoch_ids(b, 0) == e0  # any order of epochs
    assert epoch_ids(a, 0) == e0  # iterating twice gives the same epoch
    assert epoch_ids(c, 0) != e0


def test_file_set_batches_go_through_the_loader_in_the_same_order():
    n = 10
    store = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    files = FileSet(load=lambda i: store[i], labels=torch.arange(n) % 3, image_shape=(1, 2, 2))
    memory = Batches(image_set(n), 4, CPU, shuffle=True, seed=2)
    loader = Batches(files, 4, CPU, shuffle=True, seed=2, workers=0)
    assert epoch_ids(loader, 1) == epoch_ids(memory, 1)
    plain = Batches(files, 4, CPU, shuffle=False, workers=0)
    assert epoch_ids(plain, 0) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    # a subset view loads the right items
    sub = files.subset(torch.tensor([7, 2, 5]))
    assert [int(sub.item(i)[0, 0, 0]) for i in range(3)] == [7, 2, 5] and sub.labels.tolist() == [1, 2, 2]


@pytest.mark.slow
def test_cosine_schedule_ends_at_zero_when_a_batch_of_one_is_dropped():
    from torch import nn

    from sftcore.api import Backbone, HeadStrategy, TrainContext
    from sftcore._train.model import TransferModel
    from sftcore._train.loop import MetricsLog, Performance, Stage, StageParts

    torch.manual_seed(0)
    backbone = Backbone(features=nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), num_features=2, input_size=(1, 2, 2))
    model = TransferModel(backbone, nn.Linear(2, 3))
    ctx = TrainContext(stage="finetune", backbone=backbone, classes=["a", "b", "c"], epochs=2, device=CPU, seed=0,
                       extract_features=lambda: None, train_batches=lambda: iter(()))
    tf = BatchTransform((0.5,), (0.5,), None, (1, 2, 2), (1, 2, 2), CPU)
    cfg = {"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "nesterov": False},
           "schedule": {"name": "cosine", "warmup_epochs": 0}, "epochs": 2, "backbone_lr_mult": 1.0,
           "label_smoothing": 0.0, "select": "last"}
    stage = Stage(StageParts(name="finetune", cfg=cfg, model=model, ctx=ctx, strategy=HeadStrategy(), regularizers=[],
                  train=Batches(image_set(9), 4, CPU, shuffle=True), val=None, train_transform=tf,
                  eval_transform=tf, perf=Performance(CPU), log=MetricsLog(None)))
    stage.run()
    assert stage.history[-1]["lr"] == pytest.approx(0.0, abs=1e-9)
