"""Quality control of synthetic tumours (METHOD §7) plus cheap plausibility checks.

A synthetic tumour is kept when all of these hold (every score is recorded):

* **segmentor recall** (the paper's filter): more than ``threshold`` (0.7) of
  the tumour's voxels are predicted tumour by the frozen segmentor;
* **inside the organ**: at least ``min_inside`` of its voxels lie in the organ
  (or in real tumour);
* **visible**: the volume whose intensity changed by at least ``visible_hu``
  is at least ``min_visible_mm3``;
* **contrast**: mean HU of the tumour minus mean HU of the organ ring around
  it (``shell_mm`` wide) lies in the organ's plausible range
  (:attr:`freetumor.organs.Organ.tumour_contrast_hu`, or ``contrast_hu``).

Without a segmentor only the cheap checks run (``recall`` is ``None``).

Example:
    >>> import numpy as np
    >>> from freetumor.organs import get_organ
    >>> before = np.full((20, 20, 20), 60.0, np.float32)
    >>> organ = np.ones(before.shape, bool)
    >>> fake = np.zeros(before.shape, bool); fake[8:12, 8:12, 8:12] = True
    >>> after = before - 50.0 * fake
    >>> s = cheap_scores(before, after, fake, organ, (1.0, 1.0, 1.0))
    >>> s["inside_fraction"], s["visible_mm3"], s["contrast_hu"]
    (1.0, 64.0, -50.0)
    >>> decide(s, get_organ("liver"), QCConfig()).accepted
    True
    >>> decide(dict(s, recall=0.5), get_organ("liver"), QCConfig()).reasons
    ['segmentor recall 0.500 <= 0.7']
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from scipy.ndimage import binary_dilation

from .checkpoints import load_network
from .config import QC_CONTEXTS, QCConfig
from .errors import ConfigError
from .grids import Grid, bounding_box, context_region, inner_slices, network_input, resample_to, to_ras
from .models import class_argmax
from .organs import Organ


@dataclass
class QCDecision:
    """Whether a synthetic tumour is kept, the scores it was judged on and why it failed."""

    accepted: bool
    scores: dict
    reasons: list[str] = field(default_factory=list)
    # each failed check as one word, beside its reason (``empty``, ``recall``, ``inside``, ``visible``,
    # ``contrast``): what training logs count, to tell a weak judge from implausible lesions
    kinds: list[str] = field(default_factory=list)

    def as_record(self) -> dict:
        return {"accepted": self.accepted, "reasons": list(self.reasons),
                **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.scores.items()}}


def predicted_tumour(scores, classes, keepdim: bool = False):
    """Voxels whose argmax over the class axis (1) is one of the tumour ``classes`` (bool tensor)."""

    am = class_argmax(scores)
    am = am[:, None] if keepdim else am
    return torch.isin(am, torch.as_tensor(list(classes), dtype=am.dtype, device=am.device))


def judge_patch(before01, after01, fake, host, organ: Organ, settings: QCConfig, window, spacing,
                pred=None) -> "QCDecision":
    """The QC decision for one windowed training patch ([0, 1] images, the patch's own grid).

    ``host``: organ and tumour voxels of the organ; ``pred``: the segmentor's tumour prediction
    (``None``: cheap checks only).
    """
    lo, hi = (float(v) for v in window)
    scores = cheap_scores(before01 * (hi - lo) + lo, after01 * (hi - lo) + lo, fake, host, spacing,
                          settings.shell_mm, settings.visible_hu)
    if pred is not None:
        scores["recall"] = round(segmentor_recall(pred, fake), 6)
    return decide(scores, organ, settings)


def segmentor_recall(pred_tumour: np.ndarray, fake: np.ndarray) -> float:
    """|F ∩ predicted tumour| / |F| (0 for an empty F, as the released code's 1e-6 guard)."""
    n = int(np.count_nonzero(fake))
    if n == 0:
        return 0.0
    return float(np.count_nonzero(np.logical_and(pred_tumour, fake))) / n


def _reach(spacing, shell_mm: float) -> list[int]:
    """Voxels per axis the organ ring reaches beyond the tumour."""
    return [max(1, int(math.ceil(shell_mm / float(s)))) for s in spacing]


def _ring(fake: np.ndarray, spacing, shell_mm: float) -> np.ndarray:
    reach = _reach(spacing, shell_mm)
    # An ellipsoidal structuring element in mm.
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in reach)]
    ball = sum((g * float(s) / shell_mm) ** 2 for g, s in zip(grids, spacing)) <= 1.0
    return binary_dilation(fake, structure=ball) & ~fake


def cheap_scores(before_hu: np.ndarray, after_hu: np.ndarray, fake: np.ndarray, organ_mask: np.ndarray,
                 spacing, shell_mm: float = 5.0, visible_hu: float = 10.0) -> dict:
    """Scores of the cheap checks on arrays of one grid (HU).

    ``organ_mask`` holds the organ (and any real tumour) before synthesis.
    """
    fake = np.asarray(fake, bool)
    n = int(fake.sum())
    voxel_mm3 = float(np.prod([float(s) for s in spacing]))
    if n == 0:
        return {"voxels": 0, "volume_mm3": 0.0, "inside_fraction": 0.0, "visible_mm3": 0.0,
                "contrast_hu": None}
    # Every score looks at the tumour and its ring only: crop to their box (the same numbers, cheaper).
    reach = _reach(spacing, shell_mm)
    box = tuple(slice(max(0, b.start - r), min(size, b.stop + r))
                for b, r, size in zip(bounding_box(fake), reach, fake.shape))
    fake, organ_mask = fake[box], np.asarray(organ_mask)[box]
    before_hu, after_hu = before_hu[box], after_hu[box]
    inside = float(np.count_nonzero(fake & organ_mask)) / n
    change = np.abs(after_hu[fake].astype(np.float64) - before_hu[fake].astype(np.float64))
    visible = float(np.count_nonzero(change >= visible_hu)) * voxel_mm3
    ring = _ring(fake, spacing, shell_mm) & organ_mask
    contrast = None
    if ring.any():
        contrast = float(after_hu[fake].astype(np.float64).mean() - after_hu[ring].astype(np.float64).mean())
    return {"voxels": n, "volume_mm3": round(n * voxel_mm3, 3), "inside_fraction": round(inside, 6),
            "visible_mm3": round(visible, 3), "contrast_hu": None if contrast is None else round(contrast, 3)}


def decide(scores: dict, organ: Organ, settings: QCConfig) -> QCDecision:
    """Apply the thresholds to ``scores`` (from :func:`cheap_scores`, optionally with ``recall``).

    >>> from freetumor.organs import get_organ
    >>> d = decide({"voxels": 10, "inside_fraction": 1.0, "visible_mm3": 5.0, "contrast_hu": 80.0, "recall": 0.0},
    ...            get_organ("liver"), QCConfig())
    >>> d.kinds
    ['recall', 'visible', 'contrast']
    """
    failed: list[tuple[str, str]] = []  # (kind, reason)
    if scores.get("voxels", 0) == 0:
        failed.append(("empty", "empty tumour mask"))
    recall = scores.get("recall")
    if recall is not None and not recall > settings.threshold:
        failed.append(("recall", f"segmentor recall {recall:.3f} <= {settings.threshold:g}"))
    if scores.get("voxels", 0):
        if scores["inside_fraction"] < settings.min_inside:
            failed.append(("inside", f"only {scores['inside_fraction']:.1%} inside the organ "
                                     f"(need {settings.min_inside:.0%})"))
        if scores["visible_mm3"] < settings.min_visible_mm3:
            failed.append(("visible", f"visible volume {scores['visible_mm3']:.1f} mm3 < "
                                      f"{settings.min_visible_mm3:g} mm3"))
        lo, hi = settings.contrast_hu or organ.tumour_contrast_hu
        c = scores.get("contrast_hu")
        if c is not None and not lo <= c <= hi:
            failed.append(("contrast", f"contrast {c:+.1f} HU outside {lo:+g}..{hi:+g} HU for {organ.name}"))
    return QCDecision(not failed, dict(scores), [r for _k, r in failed], [k for k, _r in failed])


@dataclass
class PendingLesion:
    """One lesion's QC inputs, taken when it was blended: its cheap scores and (with a segmentor)
    the network's input and the lesion on the network grid (:meth:`QualityControl.judge`)."""

    scores: dict
    organ: Organ
    net_input: object = None
    net_fake: np.ndarray | None = None


class QualityControl:
    """The full filter: a frozen segmentor (optional) and the cheap checks.

    Args:
        segmentor: a segmentation checkpoint path, ``(model, cfg)``, or ``None`` (cheap checks only).
        settings: thresholds; default :class:`~freetumor.config.QCConfig` (section ``qc``).
        device: torch device for the segmentor, unless ``settings.device`` names one (``--qc-device``).
        context: what the segmentor sees around a lesion (default ``settings.context``): the
            training patch centred on it (``patch``, as the paper); the lesion box plus ``margin``
            network voxels either side, rounded up to the network's input multiple and filled with
            the scan (``fit``); or the box plus margin zero-padded to that multiple (``bbox``). With
            ``fit`` and ``bbox`` the window is never larger than the patch.
        margin: network voxels of context either side of the box (default ``settings.margin``).
    """

    def __init__(self, segmentor=None, settings: QCConfig | None = None, device: str | None = None,
                 context: str | None = None, margin: int | None = None):
        self.settings = settings or QCConfig()
        self.context = self.settings.context if context is None else context
        self.margin = int(self.settings.margin if margin is None else margin)
        if self.context not in QC_CONTEXTS:
            raise ConfigError(f"QC context must be fit, patch or bbox, got {self.context!r}")
        self.model = self.cfg = None
        self.path = None
        if segmentor is not None:

            self.device = torch.device(self.settings.device or device or "cpu")
            if self.device.type == "cuda" and not torch.cuda.is_available():
                raise ConfigError(f"QC device {self.device} asked for, but CUDA is not available here")
            self.model, self.cfg = load_network(segmentor, "segmentor", self.device)
            self.path = str(segmentor) if isinstance(segmentor, (str, os.PathLike)) else None
            self.tumour_classes = self.cfg.tumour_classes
        self.calls = 0  # lesions prepared (native grid)
        self.forwards = 0  # segmentor forwards

    # ------------------------------------------------------------------ patch space (training)
    def predict_tumour(self, x01):
        """Predicted tumour (bool tensor) for windowed patches ``(B, 1, X, Y, Z)`` at the segmentor's spacing.

        Inputs no larger than the training patch go through the network once (zero-padded to
        its input multiple); larger ones through sliding windows. One call is one forward.
        """

        roi = tuple(self.cfg.data.roi_size)
        shape = tuple(x01.shape[2:])
        self.forwards += 1
        # no_grad, not inference_mode: measured on the idle CPU, inference_mode was no faster (issue 14)
        with torch.no_grad():
            if all(s <= r for s, r in zip(shape, roi)):
                m = self.cfg.model.input_multiple
                pads = [(-s) % m for s in shape]
                x = F.pad(x01, (0, pads[2], 0, pads[1], 0, pads[0])) if any(pads) else x01
                logits = self.model(x.to(self.device))[:, :, : shape[0], : shape[1], : shape[2]]
            else:
                logits = sliding_window_inference(x01.to(self.device), roi, self.cfg.val.sw_batch_size,
                                                  self.model, overlap=self.cfg.val.overlap)
            return predicted_tumour(logits, self.tumour_classes)

    def predict_many(self, inputs: list) -> list[np.ndarray]:
        """Predicted tumour (bool array ``(X, Y, Z)``) for each windowed input ``(1, 1, X, Y, Z)``, in order.

        Inputs of the same shape share forwards of up to ``settings.batch_size`` (the network sees
        each input exactly as alone: no padding to a common shape), so the decisions are those of
        one-by-one calls.
        """
        out: list = [None] * len(inputs)
        groups: dict[tuple, list[int]] = {}
        for i, t in enumerate(inputs):
            groups.setdefault(tuple(t.shape), []).append(i)
        step = int(self.settings.batch_size)
        for idx in groups.values():
            for k in range(0, len(idx), step):
                chunk = idx[k:k + step]
                pred = self.predict_tumour(torch.cat([inputs[i] for i in chunk], 0)).cpu().numpy()
                for j, i in enumerate(chunk):
                    out[i] = pred[j, 0] if pred.ndim == 5 else pred[j]
        return out

    def patch_region(self, fake: np.ndarray) -> tuple[slice, ...]:
        """Where the segmentor looks, in a training patch on its own grid, for the tumour ``fake``:
        the whole patch (``patch``), or the ``fit`` / ``bbox`` window around the tumour's box."""
        if self.context == "patch" or not fake.any():
            return tuple(slice(0, n) for n in fake.shape)
        d = self.cfg.data
        grid = Grid.from_affine(np.diag([*map(float, d.spacing), 1.0]), fake.shape)
        return context_region(bounding_box(fake), grid, d.spacing, fake.shape, self.context, self.margin,
                              tuple(d.roi_size), self.cfg.model.input_multiple)

    def predict_in_patches(self, xs: list, fakes: list) -> list[np.ndarray]:
        """Predicted tumour (bool, the patch's shape) for windowed patches ``xs`` ``(1, 1, X, Y, Z)``
        holding the tumours ``fakes``: the segmentor on each tumour's :meth:`patch_region` (batched
        by :meth:`predict_many`), nothing predicted outside it."""
        regions = [self.patch_region(np.asarray(f, bool)) for f in fakes]
        preds = self.predict_many([x[(slice(None), slice(None), *r)] for x, r in zip(xs, regions)])
        out = []
        for f, r, p in zip(fakes, regions, preds):
            if p.shape != np.shape(f):  # a window of the patch (fit, bbox): nothing predicted outside it
                full = np.zeros(np.shape(f), bool)
                full[r] = p
                p = full
            out.append(p)
        return out

    # ------------------------------------------------------------------ native grid (synthesize)
    def check_lesion(self, before_box: np.ndarray, image: np.ndarray, box, lesion_box_mask: np.ndarray,
                     organ_mask: np.ndarray, grid, organ: Organ) -> QCDecision:
        """Judge one lesion just blended into ``image`` (native grid, HU): :meth:`prepare_lesion`
        then :meth:`judge` (arguments as :meth:`prepare_lesion`)."""
        return self.judge([self.prepare_lesion(before_box, image, box, lesion_box_mask, organ_mask, grid, organ)])[0]

    def prepare_lesion(self, before_box: np.ndarray, image: np.ndarray, box, lesion_box_mask: np.ndarray,
                       organ_mask: np.ndarray, grid, organ: Organ) -> "PendingLesion":
        """What QC needs of one lesion just blended into ``image`` (native grid, HU), taken now, so
        that the image may change before :meth:`judge` sees it with other lesions.

        Args:
            before_box: ``image[box]`` before the blend.
            image: the whole volume after the blend.
            box: slices of the blended region; ``lesion_box_mask`` is the tumour on that box.
            organ_mask: organ (and real tumour) voxels of the whole volume before synthesis.
        """
        self.calls += 1
        s = self.settings
        fake_box = np.asarray(lesion_box_mask, bool)
        # The ring reaches shell_mm beyond the box: score on the box grown by that much.
        grow = [int(math.ceil(s.shell_mm / float(sp))) + 1 for sp in grid.spacing]
        region = tuple(slice(max(0, b.start - g), min(n, b.stop + g)) for b, g, n in zip(box, grow, image.shape))
        inner = inner_slices(box, region)
        after = np.asarray(image[region], np.float32)
        before = after.copy()
        before[inner] = before_box
        fake = np.zeros(after.shape, bool)
        fake[inner] = fake_box
        scores = cheap_scores(before, after, fake, organ_mask[region], grid.spacing, s.shell_mm, s.visible_hu)
        if self.model is None:
            return PendingLesion(scores, organ)
        return PendingLesion(scores, organ, *self._native_input(image, box, fake_box, grid))

    def judge(self, pending: list["PendingLesion"]) -> list[QCDecision]:
        """The decisions on lesions from :meth:`prepare_lesion`, their segmentor inputs batched
        (:meth:`predict_many`)."""
        preds = self.predict_many([p.net_input for p in pending]) if self.model is not None and pending else None
        out = []
        for k, p in enumerate(pending):
            scores = dict(p.scores)
            if preds is not None:
                scores["recall"] = round(segmentor_recall(preds[k], p.net_fake), 6)
            out.append(decide(scores, p.organ, self.settings))
        return out

    def _native_input(self, image, box, fake_box, grid):
        """(windowed network input ``(1, 1, X, Y, Z)``, the lesion on that grid) of the lesion's context."""
        d = self.cfg.data
        roi = tuple(d.roi_size)
        region = context_region(box, grid, d.spacing, image.shape, self.context, self.margin, roi,
                                self.cfg.model.input_multiple)
        inner = inner_slices(box, region)
        fake = np.zeros([r.stop - r.start for r in region], np.float32)
        fake[inner] = fake_box
        fake = to_ras(fake, grid)
        t, size, _ = network_input(image, region, grid, d.spacing, d.hu_window)
        f = resample_to(torch.from_numpy(np.ascontiguousarray(fake))[None, None], size, "nearest") > 0.5
        if not bool(f.any()):  # a lesion thinner than one target voxel: keep its centre voxel
            f = resample_to(torch.from_numpy(np.ascontiguousarray(fake))[None, None], size) > 0
        return t, f.numpy()[0, 0]

    def describe(self) -> dict:
        return {"segmentor": self.path, "context": self.context, "margin": self.margin, **asdict(self.settings)}
