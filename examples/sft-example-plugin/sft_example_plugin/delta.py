"""``delta``: DELTA, feature maps kept close to the starting model's where they matter (Li et al., ICLR 2019).

Pulling every weight towards w0 (L2-SP) also holds back channels the target task has no use for.
DELTA constrains behaviour instead: the outer-layer feature maps on the target inputs, weighted
per channel by how much the target loss depends on that channel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sftcore.api import Backbone, Regularizer, Step, TrainContext, suggest
from sftcore.errors import ConfigError

ATTENTION_HEADS = ("probe", "model")
BOTTLENECK_CONV3 = "bottleneck_conv3"  # layers: the conv3 of each stage's last bottleneck (the authors' maps)
_PROBE_STEPS = 100  # L-BFGS iterations for the linear probe, a convex problem
_PROBE_L2 = 1e-3  # keeps the probe finite when the few target examples are separable


class Delta(Regularizer):
    """DELTA: attention-weighted feature-map distance to the start + beta/2 ||w_head||^2 (Li et al., ICLR 2019)

    For each feature map j (``Backbone.feature_maps``, or ``layers``: any submodules of the backbone by
    dotted name, or ``bottleneck_conv3``) with C channels of S positions::

        alpha * 1/2 * sum_batch sum_c C * W_jc * ||FM_jc(w, x) - FM_jc(w0, x)||^2 / S  +  beta/2 * ||w_head||^2

    as in the authors' code and TLlib (``alpha=beta=0.01``, both summing over the batch, so the term
    grows with batch_size). The channel weights W_j are measured once, in ``setup``: on a seeded,
    class-balanced sample of ``attention_examples`` training examples (TLlib: 10 shuffled batches of 32),
    the mean loss increase when channel c alone is zeroed in the starting model, z-scored over the
    layer's channels and passed through ``softmax(z / temperature)`` (temperature 5 in both codes), so
    each layer's weights sum to 1.

    The loss needs a classifier, and at setup the head is usually a fresh random one whose loss
    says nothing about the channels. ``attention_head: probe`` (the default) therefore first fits a
    linear classifier on the frozen starting features (``ctx.extract_features()``, L-BFGS to
    convergence), as the reference codes train a classifier before measuring; ``model`` uses the
    head the head strategy built, for strategies whose head is already meaningful (match_classes,
    imprint). The starting model runs in eval mode, as in both codes, so with BatchNorm in train mode
    the distance is not exactly 0 at the first step. A channel is dim 1 of a map ([N, C, ...]); a
    3-D map is read as transformer tokens [N, T, C].
    """

    needs_feature_maps = True

    def __init__(self, alpha: float = 0.01, beta: float = 0.01, layers: list[str] | str | None = None,
                 attention_examples: int = 320, temperature: float = 5.0, attention_head: str = "probe"):
        for key, value in (("alpha", alpha), ("beta", beta)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"config: regularizer delta: {key} must be a number >= 0, got {value!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ConfigError(f"config: regularizer delta: temperature must be a number > 0, got {temperature!r}")
        if isinstance(attention_examples, bool) or not isinstance(attention_examples, int) or attention_examples < 1:
            raise ConfigError("config: regularizer delta: attention_examples must be an integer >= 1, "
                              f"got {attention_examples!r}")
        if attention_head not in ATTENTION_HEADS:
            raise ConfigError(f"config: regularizer delta: attention_head must be 'probe' (fit a linear classifier "
                              f"on the starting features) or 'model' (the stage's head), got {attention_head!r}")
        if layers is not None and layers != BOTTLENECK_CONV3 and (
                isinstance(layers, str) or not isinstance(layers, (list, tuple)) or not layers
                or not all(isinstance(n, str) and n for n in layers)):
            raise ConfigError(f"config: regularizer delta: layers must be a list of feature-map names (dotted "
                              f"submodule names of the backbone, e.g. layer1.2.conv3) or '{BOTTLENECK_CONV3}', "
                              f"got {layers!r}")
        self.alpha, self.beta, self.temperature = float(alpha), float(beta), float(temperature)
        self.layers = layers if layers is None or isinstance(layers, str) else list(dict.fromkeys(layers))
        self.attention_examples, self.attention_head = attention_examples, attention_head
        self.ctx: TrainContext | None = None
        self.maps: list[str] = []  # the feature maps constrained: layers, or all the backbone declares
        self.attention: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ setup: channel attention
    def setup(self, ctx: TrainContext) -> None:
        self.ctx = ctx
        self.maps = resolve_layers(ctx.backbone, self.layers)
        for model in (ctx.model, ctx.start_model()):  # the start model may be a copy made before this call
            model.record_feature_maps(self.maps)
        self.head_params = list(ctx.model.head.parameters())
        self.attention = self._measure_attention(ctx)

    def _measure_attention(self, ctx: TrainContext) -> dict[str, torch.Tensor]:
        start = ctx.start_model()
        head = self._probe(ctx) if self.attention_head == "probe" else start.head
        generator = torch.Generator().manual_seed(ctx.seed)
        inputs, targets, batch_size = balanced_sample(ctx.train_batches(), ctx.num_classes,
                                                      self.attention_examples, generator)
        batches = zip(inputs.split(batch_size), targets.split(batch_size))
        increase = channel_importance(start.backbone, head, self.maps, batches, len(targets))
        return {name: attention_weights(v, self.temperature) for name, v in increase.items()}

    def _probe(self, ctx: TrainContext) -> nn.Linear:
        features, labels = ctx.extract_features()  # the current backbone is still the starting one
        return fit_linear_probe(features.float(), labels.to(features.device), ctx.num_classes)

    # ------------------------------------------------------------------ the penalty
    def penalty(self, step: Step) -> torch.Tensor:
        total = step.logits.new_zeros((), dtype=torch.float32)
        backbone_trains = any(p.requires_grad for p in self.ctx.model.backbone.parameters())
        if self.alpha and backbone_trains:  # frozen backbone: no gradient through the maps, skip the start forward
            _, _, start_maps = step.start_outputs()
            for name in self.maps:
                total = total + self.alpha * weighted_distance(step.feature_maps[name], start_maps[name],
                                                               self.attention[name])
        live = [p for p in self.head_params if p.requires_grad]
        if live and self.beta:
            total = total + 0.5 * self.beta * sum(p.float().pow(2).sum() for p in live)
        return total

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        return {"attention": {name: w.detach().cpu() for name, w in self.attention.items()}}

    def load_state_dict(self, state: dict) -> None:
        device = self.ctx.device if self.ctx is not None else "cpu"
        self.attention = {name: w.to(device) for name, w in state["attention"].items()}


# --------------------------------------------------------------------------- the pieces, testable alone
def resolve_layers(backbone: Backbone, layers: list[str] | str | None) -> list[str]:
    """The feature-map names DELTA constrains: ``layers`` checked against the backbone's submodules,
    ``bottleneck_conv3`` resolved, or the declared ``Backbone.feature_maps``."""
    declared = list(backbone.feature_maps)
    if layers is None:
        if not declared:
            raise ConfigError("config: regularizer delta needs a backbone that declares feature_maps "
                              "(Backbone.feature_maps) or layers naming its submodules; this one declares none: "
                              "set layers, use l2_sp, or a backbone that does")
        return declared
    if layers == BOTTLENECK_CONV3:
        return _bottleneck_conv3(backbone)
    names = [n for n, _ in backbone.features.named_modules() if n]
    known = set(names)
    unknown = [n for n in layers if n not in known]
    if unknown:
        hints = ", ".join(f"'{n}'{suggest(n, names)}" for n in unknown)
        raise ConfigError(f"config: regularizer delta: layers: the backbone has no submodule {hints}; name "
                          f"submodules of Backbone.features by dotted name (its declared feature maps: {declared}), "
                          f"or use layers: {BOTTLENECK_CONV3}")
    return list(layers)


def _bottleneck_conv3(backbone: Backbone) -> list[str]:
    """In each declared feature map (a ResNet stage), the last submodule called ``conv3``: the last
    bottleneck's 1x1 expansion conv, before its BatchNorm and the residual add, where the DELTA
    authors and TLlib read their maps (ResNet-50: layer1.2.conv3 ... layer4.2.conv3)."""
    found = []
    for stage in backbone.feature_maps:
        convs = [n for n, _ in backbone.features.get_submodule(stage).named_modules() if n.split(".")[-1] == "conv3"]
        if convs:
            found.append(f"{stage}.{convs[-1]}")
    if not found:
        raise ConfigError(f"config: regularizer delta: layers: {BOTTLENECK_CONV3} found no conv3 in the backbone's "
                          f"feature maps {list(backbone.feature_maps)} (not a bottleneck ResNet); name the "
                          "submodules in layers instead, e.g. layer1.1.conv2 for a basic-block ResNet")
    return found


def balanced_sample(batches, num_classes: int, limit: int, generator: torch.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(inputs, targets, batch_size)``: up to ``limit`` of the examples ``batches`` yields, about
    limit / num_classes of each class (all of a smaller class), a uniform draw within each class.

    Why: datasets store examples class by class, so the first ``limit`` would measure the attention
    of the first few classes only. Each class owns a fixed set of slots (its quota; when
    limit < num_classes, ``limit`` classes drawn at random get one each); every example gets a random
    key and a class keeps those with the smallest keys. One pass, whatever the order, and never more
    than ``limit`` examples held (the batches are already on the device).
    """
    quota = torch.full((num_classes,), limit // num_classes, dtype=torch.long)
    quota[torch.randperm(num_classes, generator=generator)[:limit % num_classes]] += 1
    slot_class, slot_key, held, batch_size = torch.repeat_interleave(torch.arange(num_classes), quota), None, None, 0
    for x, y in batches:
        if held is None:
            batch_size, slot_class, quota = len(y), slot_class.to(y.device), quota.to(y.device)
            slot_key = torch.full(slot_class.shape, 2.0, dtype=torch.float64, device=y.device)  # 2: empty
            held = x.new_empty((len(slot_class), *x.shape[1:]))
        key = torch.rand(len(y), generator=generator, dtype=torch.float64).to(y.device)
        freed, new = _replacements(slot_class, slot_key, y, key, quota)
        held[freed], slot_key[freed] = x[new], key[new]
    filled = slot_key < 2 if held is not None else None
    if filled is None or not bool(filled.any()):
        raise ConfigError("config: regularizer delta: the training data is empty, nothing to measure "
                          "channel attention on")
    return held[filled], slot_class[filled], batch_size


def _replacements(slot_class, slot_key, y, key, quota) -> tuple[torch.Tensor, torch.Tensor]:
    """Slots whose example leaves the sample and, class for class, the batch examples that take them:
    per class, the ``quota`` smallest keys among the slots' and the batch's win."""
    labels, keys = torch.cat([slot_class, y]), torch.cat([slot_key, key])
    order = torch.argsort(keys, stable=True)
    order = order[torch.argsort(labels[order], stable=True)]  # by class, then by key
    ranked = labels[order]
    rank = torch.arange(len(order), device=order.device) - torch.searchsorted(ranked, ranked)
    wins = torch.zeros(len(labels), dtype=torch.bool, device=labels.device)
    wins[order[rank < quota[ranked]]] = True
    slots = len(slot_class)
    freed = (~wins[:slots]).nonzero().squeeze(1)  # slots are grouped by class, so these are in class order
    new = wins[slots:].nonzero().squeeze(1)
    return freed, new[torch.argsort(y[new], stable=True)]


def _channels_first(fm: torch.Tensor) -> torch.Tensor:
    """Any feature map as [N, C, S]."""
    if fm.ndim == 2:
        return fm.unsqueeze(-1)
    if fm.ndim == 3:
        return fm.transpose(1, 2)
    return fm.flatten(2)


def weighted_distance(fm: torch.Tensor, fm0: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """1/2 * sum_batch sum_c C * w_c * ||fm_c - fm0_c||^2 / S, in float32."""
    diff = _channels_first(fm.float() - fm0.detach().float())
    channels, positions = diff.shape[1], diff.shape[2]
    per_channel = diff.pow(2).sum(2)  # [N, C]
    return 0.5 * channels * (per_channel * weights.to(per_channel)).sum() / positions


def _zero_channel(out: torch.Tensor, channel: int) -> torch.Tensor:
    out = out.clone()
    out.select(2 if out.ndim == 3 else 1, channel).zero_()
    return out


@torch.no_grad()
def channel_importance(backbone: nn.Module, head: nn.Module, layers: list[str], batches, limit: int
                       ) -> dict[str, torch.Tensor]:
    """Mean increase of the cross-entropy per example when each channel of each layer is zeroed alone."""
    sums: dict[str, torch.Tensor] = {}
    seen = 0
    for x, y in batches:
        x, y = x[:limit - seen], y[:limit - seen]
        maps: dict[str, torch.Tensor] = {}
        handles = [backbone.get_submodule(n).register_forward_hook(
            lambda _m, _i, out, n=n: maps.__setitem__(n, out)) for n in layers]
        try:
            base = F.cross_entropy(head(backbone(x)).float(), y, reduction="sum")
        finally:
            for h in handles:
                h.remove()
        for name in layers:
            count = _channels_first(maps[name]).shape[1]
            total = sums.setdefault(name, torch.zeros(count, dtype=torch.float64, device=base.device))
            module, channel = backbone.get_submodule(name), [0]
            handle = module.register_forward_hook(lambda _m, _i, out: _zero_channel(out, channel[0]))
            try:
                for c in range(count):
                    channel[0] = c
                    masked = F.cross_entropy(head(backbone(x)).float(), y, reduction="sum")
                    total[c] += (masked - base).double()
            finally:
                handle.remove()
        seen += len(y)
        if seen >= limit:
            break
    if not seen:
        raise ConfigError("config: regularizer delta: the training data is empty, nothing to measure "
                          "channel attention on")
    return {name: total / seen for name, total in sums.items()}


def attention_weights(increase: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(zscore(increase) / temperature): one layer's channel weights, summing to 1."""
    increase = increase.double()
    std = increase.std(unbiased=False) if increase.numel() > 1 else increase.new_zeros(())
    z = (increase - increase.mean()) / std if std > 0 else torch.zeros_like(increase)
    return torch.softmax(z / temperature, 0).float()


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> nn.Linear:
    """Multinomial logistic regression on frozen features (L-BFGS from zero, a little L2)."""
    probe = nn.Linear(features.shape[1], num_classes).to(features.device)
    nn.init.zeros_(probe.weight)
    nn.init.zeros_(probe.bias)
    optimizer = torch.optim.LBFGS(probe.parameters(), lr=1.0, max_iter=_PROBE_STEPS, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(features), labels) + 0.5 * _PROBE_L2 * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    probe.requires_grad_(False)
    return probe.eval()
