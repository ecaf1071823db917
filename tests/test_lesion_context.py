"""The one crop geometry of real and fake lesions (freetumor.lesions.context) and what Stage 1's
discriminator reads through it (training.stage1.lesion_views)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from freetumor.lesions.context import CONTEXT_PAD_HU, context_box, matched_context
from freetumor.training.stage1 import lesion_views

SPACING = (1.0, 1.0, 1.25)
PATCH = (32, 32, 16)
PAD01 = 0.0  # -1000 HU in the lung window (-1000, 500)


def lung(seed: int, shape=(64, 64, 32)) -> np.ndarray:
    """Lung-like context in [0, 1]: smooth noise around -850 HU with vessel-like bright blobs."""
    rng = np.random.default_rng(seed)
    hu = -850.0 + 60.0 * ndimage.gaussian_filter(rng.standard_normal(shape), 1.5) / 0.1
    hu += 500.0 * (ndimage.gaussian_filter(rng.standard_normal(shape), 2.0) > 0.12)
    return np.clip((hu + 1000.0) / 1500.0, 0.0, 1.0).astype(np.float32)


def ball(shape, centre, r_mm) -> np.ndarray:
    g = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape, centre, SPACING)], indexing="ij")
    return sum(v * v for v in g) <= r_mm * r_mm


def real_patch(ctx: np.ndarray, centre, r_mm, offset) -> tuple[np.ndarray, np.ndarray]:
    """A LIDC-like real lesion: a small volume of interest (lesion + 5 mm in-plane, its own slices
    only) cut from ``ctx``, placed at ``offset`` in an air-padded training patch."""
    m = ball(ctx.shape, centre, r_mm)
    lo, hi = context_box(m, SPACING, margin_mm=5.0)
    voi = tuple(slice(a, b) for a, b in zip(lo, hi))
    img, msk = np.full(PATCH, PAD01, np.float32), np.zeros(PATCH, bool)
    dst = tuple(slice(o, o + (b - a)) for o, a, b in zip(offset, lo, hi))
    img[dst], msk[dst] = ctx[voi], m[voi]
    return img, msk


def fake_patch(ctx: np.ndarray, centre, r_mm, corner) -> tuple[np.ndarray, np.ndarray]:
    """A fake lesion in a whole-chest patch: the patch of ``ctx`` at ``corner``, no padding."""
    m = ball(ctx.shape, centre, r_mm)
    sl = tuple(slice(c, c + n) for c, n in zip(corner, PATCH))
    return ctx[sl].copy(), m[sl]


def views(pairs):
    x = torch.from_numpy(np.stack([p[0] for p in pairs]))[:, None]
    m = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.float32))[:, None]
    return lesion_views(x, m, SPACING, PAD01)


def test_context_box_margins_in_mm():
    m = np.zeros((30, 30, 12), bool)
    m[10:14, 12:15, 5:7] = True
    lo, hi = context_box(m, (0.7, 0.5, 2.5))
    assert lo == (10 - 5, 12 - 7, 5) and hi == (14 + 5, 15 + 7, 7)  # ceil(3.5/0.7) = 5, ceil(3.5/0.5) = 7
    assert context_box(m, (0.7, 0.5, 2.5), slice_margin_mm=2.6) == ((5, 5, 3), (19, 22, 9))
    m[0, 0, 0] = True
    assert context_box(m, (1.0, 1.0, 1.0))[0] == (0, 0, 0)  # clipped to the array
    with pytest.raises(ValueError, match="empty"):
        context_box(np.zeros((4, 4, 4)), (1.0, 1.0, 1.0))


def test_real_and_fake_of_one_size_get_identical_geometry():
    """Same lesion, same texture: a small padded crop placed off-centre and a whole-chest patch
    give the discriminator identical inputs (shape, spacing, padding pattern and values)."""
    ctx = lung(0)
    centre, r = (30, 33, 15), 4.0
    real = real_patch(ctx, centre, r, offset=(2, 5, 3))
    fake = fake_patch(ctx, centre, r, corner=(20, 19, 6))
    assert real[1].sum() == fake[1].sum() > 0
    assert not np.array_equal(real[0], fake[0])  # the raw patches differ: padding vs whole chest
    x, m = views([real, fake])
    assert x.shape == (2, 1, *PATCH) and m.shape == (2, 1, *PATCH)
    assert torch.equal(m[0], m[1])
    assert torch.equal(x[0] == PAD01, x[1] == PAD01)  # one padding pattern
    assert torch.equal(x[0], x[1])
    # the lesion sits at the patch centre; outside its box (3.5 mm in-plane, its own slices) all is padding
    idx = torch.nonzero(m[0, 0]).float().mean(dim=0)
    assert torch.allclose(idx, torch.tensor([16.0, 16.0, 8.0]), atol=0.6)
    zs = torch.nonzero(m[0, 0])[:, 2]
    assert bool((x[0, 0, :, :, : int(zs.min())] == PAD01).all()) and bool((x[0, 0, :, :, int(zs.max()) + 1:] == PAD01).all())


def test_numpy_rule_is_the_discriminators_rule():
    ctx = lung(1)
    fake = fake_patch(ctx, (28, 30, 14), 5.0, corner=(10, 12, 4))
    img, msk = matched_context(fake[0], fake[1], SPACING, PATCH, pad=PAD01)
    x, m = views([fake])
    assert np.array_equal(x[0, 0].numpy(), img) and np.array_equal(m[0, 0].numpy() > 0, msk)
    hu, _ = matched_context(fake[0] * 1500.0 - 1000.0, fake[1], SPACING, PATCH)
    assert float(hu.min()) == CONTEXT_PAD_HU


def test_views_keep_gradients_and_skip_lesion_free_patches():
    ctx = lung(2)
    fake = fake_patch(ctx, (30, 30, 15), 4.0, corner=(16, 16, 7))
    empty = (ctx[:32, :32, :16].copy(), np.zeros(PATCH, bool))
    x = torch.from_numpy(np.stack([empty[0], fake[0]]))[:, None].requires_grad_(True)
    m = torch.from_numpy(np.stack([empty[1], fake[1]]).astype(np.float32))[:, None]
    xv, mv = lesion_views(x, m, SPACING, PAD01)
    assert xv.shape[0] == 1 and float(mv.sum()) == float(m.sum())
    (xv * mv).sum().backward()
    assert float(x.grad[1].sum()) == float(m[1].sum()) and float(x.grad[0].abs().sum()) == 0.0
    xn, mn = lesion_views(x, torch.zeros_like(m), SPACING, PAD01)  # no lesion: as they are
    assert xn is x


def _context_auc(real, fake) -> float:
    """Cross-validated AUC of a logistic regression on the context alone (lesion voxels blanked):
    per-slice means and the padded share, real (0) vs fake (1)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_predict

    def feats(x, m):
        c = np.where(m, 0.5, x)
        return np.r_[c.mean(axis=(0, 1)), (c == PAD01).mean(), c.std()]

    X = np.stack([feats(x, m) for x, m in real + fake])
    y = np.r_[np.zeros(len(real)), np.ones(len(fake))]
    p = cross_val_predict(LogisticRegression(max_iter=2000), X, y, cv=5, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, p))


def test_context_alone_cannot_tell_real_from_fake_through_the_box():
    """Real and fake lesions whose contexts differ only by the crop rule (same texture law, same
    sizes): on raw patches the context separates them, through the box it cannot."""
    rng = np.random.default_rng(7)
    real, fake = [], []
    for k in range(24):
        r = float(rng.uniform(3.0, 6.0))
        centre = tuple(int(v) for v in rng.integers([24, 24, 12], [40, 40, 20]))
        real.append(real_patch(lung(100 + k), centre, r, offset=tuple(int(v) for v in rng.integers(0, 4, 3))))
        corner = tuple(int(c - n // 2 + d) for c, n, d in zip(centre, PATCH, rng.integers(-3, 4, 3)))
        fake.append(fake_patch(lung(200 + k), centre, r, corner=corner))
    raw = _context_auc(real, fake)
    xr, mr = views(real)
    xf, mf = views(fake)
    boxed = _context_auc([(a[0].numpy(), b[0].numpy() > 0) for a, b in zip(xr, mr)],
                         [(a[0].numpy(), b[0].numpy() > 0) for a, b in zip(xf, mf)])
    assert raw > 0.95
    assert boxed < 0.75
