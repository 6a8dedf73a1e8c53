"""``delta``: DELTA, feature maps kept close to the starting model's where they matter (Li et al., ICLR 2019).

Pulling every weight towards w0 (L2-SP) also holds back channels the target task has no use for.
DELTA constrains behaviour instead: the outer-layer feature maps on the target inputs, weighted
per channel by how much the target loss depends on that channel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sftcore.api import Regularizer, Step, TrainContext
from sftcore.errors import ConfigError

ATTENTION_HEADS = ("probe", "model")
_PROBE_STEPS = 100  # L-BFGS iterations for the linear probe, a convex problem
_PROBE_L2 = 1e-3  # keeps the probe finite when the few target examples are separable


class Delta(Regularizer):
    """DELTA: attention-weighted feature-map distance to the start + beta/2 ||w_head||^2 (Li et al., ICLR 2019)

    For each feature map j (``Backbone.feature_maps``, or ``layers``) with C channels of S positions::

        alpha * 1/2 * sum_batch sum_c C * W_jc * ||FM_jc(w, x) - FM_jc(w0, x)||^2 / S  +  beta/2 * ||w_head||^2

    as in the authors' code and TLlib (``alpha=beta=0.01``, both summing over the batch, so the term
    grows with batch_size). The channel weights W_j are measured once, in ``setup``: on up to
    ``attention_examples`` training examples (TLlib: 10 batches of 32), the mean loss increase when
    channel c alone is zeroed in the starting model, z-scored over the layer's channels and passed
    through ``softmax(z / temperature)`` (temperature 5 in both codes), so each layer's weights sum to 1.

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

    def __init__(self, alpha: float = 0.01, beta: float = 0.01, layers: list[str] | None = None,
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
        if layers is not None and (isinstance(layers, str) or not isinstance(layers, (list, tuple)) or not layers
                                   or not all(isinstance(n, str) for n in layers)):
            raise ConfigError(f"config: regularizer delta: layers must be a list of feature-map names, got {layers!r}")
        self.alpha, self.beta, self.temperature = float(alpha), float(beta), float(temperature)
        self.layers = list(layers) if layers is not None else None
        self.attention_examples, self.attention_head = attention_examples, attention_head
        self.ctx: TrainContext | None = None
        self.maps: list[str] = []  # the feature maps constrained: layers, or all the backbone declares
        self.attention: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ setup: channel attention
    def setup(self, ctx: TrainContext) -> None:
        self.ctx = ctx
        declared = list(ctx.backbone.feature_maps)
        if not declared:
            raise ConfigError("config: regularizer delta needs a backbone that declares feature_maps "
                              "(Backbone.feature_maps); this one declares none: use l2_sp, or a backbone that does")
        unknown = [n for n in self.layers or [] if n not in declared]
        if unknown:
            raise ConfigError(f"config: regularizer delta: layers {unknown} are not feature maps of the backbone; "
                              f"choose from {declared}")
        self.maps = self.layers or declared
        self.head_params = list(ctx.model.head.parameters())
        self.attention = self._measure_attention(ctx)

    def _measure_attention(self, ctx: TrainContext) -> dict[str, torch.Tensor]:
        start = ctx.start_model()
        head = self._probe(ctx) if self.attention_head == "probe" else start.head
        increase = channel_importance(start.backbone, head, self.maps, ctx.train_batches(),
                                      self.attention_examples)
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
