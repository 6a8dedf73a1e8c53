"""CutMix box sizes: the mean pasted share of a 32x32 image for sftcore's box and timm's rand_bbox at alpha = 1, on the
same lam draws (docs/augmentations.md).

    python benchmarks/cutmix_area.py
"""
import numpy as np

from timm.data.mixup import rand_bbox

h = w = 32
n = 200_000
rng = np.random.default_rng(0)
lam = rng.beta(1.0, 1.0, n)
cy, cx = rng.random(n) * h, rng.random(n) * w  # sftcore: continuous centre
side = np.sqrt(1 - lam)
top = np.clip(np.round(cy - side * h / 2), 0, h); bottom = np.clip(np.round(cy + side * h / 2), 0, h)
left = np.clip(np.round(cx - side * w / 2), 0, w); right = np.clip(np.round(cx + side * w / 2), 0, w)
ours = ((bottom - top) * (right - left) / (h * w)).mean()
np.random.seed(0)
areas = []
for l in lam[:50_000]:
    yl, yh, xl, xh = rand_bbox((h, w), l)
    areas.append((yh - yl) * (xh - xl) / (h * w))
print(f"sftcore mean pasted area {ours:.3f}  timm rand_bbox {np.mean(areas):.3f}  (1 - lam mean {np.mean(1 - lam):.3f})")
