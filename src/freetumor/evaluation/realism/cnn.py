"""The CNN reader of ``freetumor realism --reader cnn``: a small 3D CNN that tells real lesion crops
from synthetic ones, scored by group-wise (patient-wise) cross-validation.

The crops: one geometry for both sets (:func:`cnn_grid`, :func:`cnn_input`)
    Every lesion is cut from its **native** image (``LesionCrop.native_image``) by one rule, the
    context box of :mod:`freetumor.lesions.context` (Stage 1's discriminator reads the same box): the
    box is the lesion's bounding box, widened in-plane by :data:`CNN_MARGIN_MM` (3.5 mm) and not at
    all along the slice axis (the LIDC nodule crops end at the nodule's first and last slice, so a
    slice margin would be padding on the real side only); everything outside the box reads
    :data:`CNN_PAD_HU`. The box is sampled on one grid centred on the lesion's centroid:
    ``px x px`` voxels (default :data:`CNN_INPLANE_PX` = 32) of the **native in-plane spacing**
    (the median in-plane spacing of both sets; grain and stepped edges live there), and ``slices``
    (default :data:`CNN_SLICES` = 8) of the **matched slice spacing**, the thicker of the two sets'
    median slice spacings (a thinner-sliced lesion is first blurred along the slice axis by a
    Gaussian of FWHM ``sqrt(T^2 - t^2)``, so its slices are as thick as the other set's, then
    resampled). HU are clipped to the organ's window and scaled to [-1, 1]. No mask channel: it
    would mostly tell where the box cuts the lesion.
The network (:class:`SmallCNN`, :data:`CNN_DESCRIPTION`)
    Three 3x3x3 convolutions (8, 16, 32 channels, ReLU; the first strided in-plane only, the second
    in all axes, so the first one still sees every native voxel; batch norm), global average pooling,
    dropout and one logit; Adam, balanced binary cross-entropy, random in-plane flips and
    transposes and slice flips; :data:`CNN_EPOCHS` epochs. Seeded (torch and numpy), one thread:
    the same inputs and seed give the same AUC.
The score (:func:`cnn_reader`)
    Group-wise stratified k-fold (scikit-learn ``StratifiedGroupKFold``): all lesions of one group
    (a case, i.e. one scan, unless ``group_of`` says otherwise, e.g. the patient) fall in one fold,
    so the net is never tested on a patient or host scan it was trained on. The pooled
    out-of-fold ROC AUC and a stratified bootstrap CI, as the radiomics reader reports them.
    Fewer than :data:`CNN_MIN_LESIONS` lesions on a side is a one-line error.

Example (two obviously different kinds of crops; see ``tests/test_realism_cnn.py``):
    >>> import numpy as np
    >>> from freetumor.lesions.features import LesionCrop
    >>> def crop(k, hu):
    ...     m = np.zeros((20, 20, 8), bool); m[7:13, 7:13, 2:6] = True
    ...     img = np.where(m, hu, -850.0).astype(np.float32)
    ...     return LesionCrop("x", f"p{k // 2}", 1, img, m, (1.0, 1.0, 1.25), {"native_spacing": [1.0, 1.0, 1.25]},
    ...                       native_image=img, native_mask=m)
    >>> grid = cnn_grid([[crop(0, 0.0)]], px=12, slices=4)
    >>> grid["inplane_mm"], grid["slice_mm"], cnn_input(crop(0, 0.0), grid, (-1000, 500)).shape
    (1.0, 1.25, (12, 12, 4))
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

from ...errors import ConfigError
from ...lesions.context import CONTEXT_MARGIN_MM, CONTEXT_PAD_HU, CONTEXT_SLICE_MARGIN_MM, context_box
from ...lesions.features import LesionCrop
from ..stats import bootstrap_auc_ci, roc_auc

__all__ = [
    "CNN_DESCRIPTION",
    "CNN_EPOCHS",
    "CNN_INPLANE_PX",
    "CNN_MARGIN_MM",
    "CNN_MIN_LESIONS",
    "CNN_PAD_HU",
    "CNN_SLICES",
    "cnn_grid",
    "cnn_input",
    "cnn_reader",
]

CNN_MIN_LESIONS = 20
CNN_INPLANE_PX = 32
CNN_SLICES = 8
CNN_MARGIN_MM = CONTEXT_MARGIN_MM  # the shared context box (freetumor.lesions.context)
CNN_PAD_HU = CONTEXT_PAD_HU
CNN_EPOCHS = 20
CNN_BOOTSTRAP = 2000
CNN_DESCRIPTION = ("3D CNN: conv3x3x3 8-16-32 channels (strides 2x2x1, 2x2x2, 1), batch norm, ReLU, global average pool, "
                   "dropout 0.3, one logit; "
                   "Adam lr 2e-3, weight decay 1e-4, batch 16, balanced BCE, flips/transposes in-plane and slice flips; "
                   "group-wise stratified k-fold (StratifiedGroupKFold)")


def _native(crop: LesionCrop) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if crop.native_image is not None and crop.native_mask is not None and "native_spacing" in crop.meta:
        return (np.asarray(crop.native_image, np.float32), np.asarray(crop.native_mask, bool),
                np.asarray(crop.meta["native_spacing"], np.float64))
    return np.asarray(crop.image, np.float32), np.asarray(crop.mask, bool), np.asarray(crop.spacing, np.float64)


def cnn_grid(sets: Sequence[Sequence[LesionCrop]], px: int = CNN_INPLANE_PX, slices: int = CNN_SLICES,
             slice_mm: float | None = None) -> dict:
    """The one sampling grid of every crop of ``sets`` (the module doc): in-plane spacing = median
    native in-plane spacing over all crops; slice spacing = ``slice_mm``, else the largest of the sets'
    median native slice spacings."""
    sps = [[_native(c)[2] for c in s] for s in sets if len(s)]
    if not sps:
        raise ConfigError("no lesion crops to read")
    inplane = float(np.median([min(sp[0], sp[1]) for s in sps for sp in s]))
    thick = float(slice_mm) if slice_mm is not None else max(float(np.median([sp[2] for sp in s])) for s in sps)
    return {"px": int(px), "slices": int(slices), "inplane_mm": round(inplane, 4), "slice_mm": round(thick, 4),
            "margin_mm": CNN_MARGIN_MM, "slice_margin_mm": CONTEXT_SLICE_MARGIN_MM, "pad_hu": CNN_PAD_HU}


def cnn_input(crop: LesionCrop, grid: dict, window) -> np.ndarray:
    """One crop on ``grid`` (``(px, px, slices)`` float32 in [-1, 1]; the module doc)."""
    img, mask, sp = _native(crop)
    if not mask.any():
        raise ConfigError(f"lesion {crop.case}#{crop.index}: empty mask")
    idx = np.argwhere(mask)
    lo, hi = context_box(mask, sp, grid["margin_mm"], grid.get("slice_margin_mm", CONTEXT_SLICE_MARGIN_MM))
    lo, hi = np.asarray(lo), np.asarray(hi)
    box = img[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.float64)
    t, T = float(sp[2]), float(grid["slice_mm"])
    if t < T - 1e-6 and box.shape[2] > 1:  # thicken thin slices: FWHM sqrt(T^2 - t^2), in slices
        box = ndimage.gaussian_filter1d(box, math.sqrt(T * T - t * t) / 2.3548 / t, axis=2, mode="nearest")
    centre = idx.mean(axis=0) - lo
    px, ns = grid["px"], grid["slices"]
    steps = (grid["inplane_mm"] / sp[0], grid["inplane_mm"] / sp[1], T / t)
    axes = [centre[a] + (np.arange(n) - (n - 1) / 2.0) * steps[a] for a, n in enumerate((px, px, ns))]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))
    out = ndimage.map_coordinates(box, coords.reshape(3, -1), order=1, mode="nearest").reshape(px, px, ns)
    outside = np.zeros(out.shape, bool)
    for a in range(3):
        c = coords[a]
        outside |= (c < -0.5) | (c > box.shape[a] - 0.5)
    out[outside] = grid["pad_hu"]
    w_lo, w_hi = float(window[0]), float(window[1])
    return (2.0 * (np.clip(out, w_lo, w_hi) - w_lo) / (w_hi - w_lo) - 1.0).astype(np.float32)


def _net(torch):
    nn = torch.nn

    class SmallCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv3d(1, 8, 3, padding=1, stride=(2, 2, 1)), nn.BatchNorm3d(8), nn.ReLU(),
                nn.Conv3d(8, 16, 3, padding=1, stride=2), nn.BatchNorm3d(16), nn.ReLU(),
                nn.Conv3d(16, 32, 3, padding=1), nn.BatchNorm3d(32), nn.ReLU(), nn.AdaptiveAvgPool3d(1))
            self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(32, 1))

        def forward(self, x):
            return self.head(self.features(x))[:, 0]

    return SmallCNN()


def _augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = x.copy()
    for i in range(len(out)):
        v = out[i]
        if rng.random() < 0.5:
            v = v[::-1]
        if rng.random() < 0.5:
            v = v[:, ::-1]
        if rng.random() < 0.5:
            v = v[:, :, ::-1]
        if rng.random() < 0.5:
            v = v.transpose(1, 0, 2)
        out[i] = v
    return out


def _fit_predict(x_train, y_train, x_test, epochs: int, seed: int) -> np.ndarray:
    import torch  # deferred: keeps `freetumor --help` and the radiomics reader light

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: reproducible sums
    try:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        net = _net(torch)
        opt = torch.optim.Adam(net.parameters(), lr=2e-3, weight_decay=1e-4)
        pos = max(1.0, float(y_train.sum()))
        weight = torch.tensor(float(len(y_train) - y_train.sum()) / pos)
        loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=weight)
        net.train()
        for _ in range(epochs):
            order = rng.permutation(len(y_train))
            for start in range(0, len(order), 16):
                b = order[start:start + 16]
                xb = torch.from_numpy(np.ascontiguousarray(_augment(x_train[b], rng)))[:, None]
                loss = loss_fn(net(xb), torch.from_numpy(y_train[b].astype(np.float32)))
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval()
        with torch.no_grad():
            xt = torch.from_numpy(np.ascontiguousarray(x_test))[:, None]
            p = torch.sigmoid(net(xt)) + torch.sigmoid(net(torch.flip(xt, dims=(2,))))
        return (p / 2.0).numpy().astype(np.float64)
    finally:
        torch.set_num_threads(threads)


def cnn_reader(real: Sequence[LesionCrop], synthetic: Sequence[LesionCrop], window, folds: int = 5, seed: int = 0,
               group_of: Callable[[LesionCrop], str] | None = None, grid: dict | None = None,
               epochs: int = CNN_EPOCHS, min_lesions: int = CNN_MIN_LESIONS) -> dict:
    """Cross-validated AUC of the CNN reader, real (class 0) against synthetic (class 1).

    ``group_of(crop)`` names a crop's group (default its case); groups never straddle folds, and a
    group name is taken per side (a real and a synthetic group of one name are different groups).
    ``grid`` defaults to :func:`cnn_grid` of the two sets. ``k = min(folds, groups of either side)``.

    Returns ``auc``, ``auc_ci95``, ``auc_folds``, ``folds``, ``n_real``, ``n_synthetic``,
    ``groups`` (count per side), ``grid``, ``epochs``, ``seed``, ``reader``; and ``oof`` (the
    out-of-fold probabilities, real first) for figures.

    Raises:
        ConfigError: fewer than ``min_lesions`` lesions on a side, fewer than 2 groups on a side,
            ``folds < 2``.
    """
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ConfigError(f"folds must be an integer of at least 2, got {folds!r}")
    n_real, n_syn = len(real), len(synthetic)
    if min(n_real, n_syn) < min_lesions:
        raise ConfigError(f"the CNN reader needs at least {min_lesions} lesions per side, got {n_real} real and "
                          f"{n_syn} synthetic")
    group_of = group_of or (lambda c: c.case)
    groups = np.array([f"real:{group_of(c)}" for c in real] + [f"synthetic:{group_of(c)}" for c in synthetic])
    n_groups = {"real": len(set(groups[:n_real])), "synthetic": len(set(groups[n_real:]))}
    k = int(min(folds, *n_groups.values()))
    if k < 2:
        raise ConfigError(f"the CNN reader needs lesions of at least 2 cases per side for group-wise folds, got "
                          f"{n_groups['real']} real and {n_groups['synthetic']} synthetic")
    grid = grid or cnn_grid([real, synthetic])
    X = np.stack([cnn_input(c, grid, window) for c in list(real) + list(synthetic)])
    y = np.r_[np.zeros(n_real), np.ones(n_syn)]
    from sklearn.model_selection import StratifiedGroupKFold  # deferred: heavy optional dependency

    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=int(seed))
    oof = np.full(len(y), np.nan)
    auc_folds = []
    for f, (train, test) in enumerate(cv.split(X, y, groups)):
        oof[test] = _fit_predict(X[train], y[train], X[test], epochs, int(seed) * 100 + f)
        auc_folds.append(roc_auc(y[test], oof[test]))
    return {
        "reader": "cnn",
        "auc": roc_auc(y, oof),
        "auc_ci95": list(bootstrap_auc_ci(y, oof, CNN_BOOTSTRAP, seed=np.random.SeedSequence([int(seed), 95]))),
        "auc_folds": [float(a) for a in auc_folds],
        "folds": k,
        "n_real": n_real,
        "n_synthetic": n_syn,
        "groups": n_groups,
        "grid": grid,
        "epochs": int(epochs),
        "seed": int(seed),
        "classifier": CNN_DESCRIPTION,
        "oof": [float(v) for v in oof],
    }
