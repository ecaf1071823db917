"""Stage 1: adversarial training of the difference-map generator (METHOD §4-§7, §11).

Each iteration, on a batch of training patches (windowed to [0, 1], labels as
training classes) that each carry one rule-based tumour mask F in one organ
(:class:`PrepareFakeTumourd`):

* **G step** — D~ = blur(G(x)[organ channel]); x' = x + sign * O * B * T * D~;
  L_G = w * (1 - <P_D[real]>_F) + (1 - <P_S[tumour]>_F) with the frozen
  segmentor S (w = 0.1 abdomen, 0.5 chest). The discriminator's weights are
  frozen during this step, so no gradient reaches them.
* **D step** — the same x' with D~ detached; L_D = ½[(1 - <P_D[fake]>_F) +
  (1 - <P_D[real]>_R)], R the real-tumour voxels of labelled patches.
* **What D reads** (``synth.d_context``, :meth:`Stage1.d_view`): by default each lesion, real or fake,
  in its context box of :mod:`freetumor.lesions.context` (bounding box + 3.5 mm in-plane, centred,
  -1000 HU elsewhere), so that a real lesion from a small padded crop and a fake one in a whole chest
  come in one geometry; ``patch`` is the released code's whole patch.

With a lesion profile (``train-synth --profile``, ``synth.lesions: profile``) the fake lesion is
the profile's render x_profile (:class:`PrepareProfileTumourd`) and the generator a bounded residual
on it (:class:`~freetumor.models.generator.ResidualGenerator`, zero at step 0):
x' = x_profile + f * G(x_profile), f the render's occupancy; the two steps are otherwise the same.
With held-aside real lesions (``--realism-real``) every epoch line also has ``realism_auc``
(:class:`Realism`) and ``best_realism.pt`` keeps the generator with the lowest one.

Corrections of the released code (METHOD §10.4), all applied here:

1. labels are the training classes in both steps (organ / tumour / a separate
   fake mask), so no organ id collides with "fake tumour" and real pancreas
   and kidney tumours count as real;
2. the generator channel is the tumour's organ's (liver 0, pancreas 1,
   kidney 2), not always channel 0;
3. the discriminator's gradients are never filled by the G step and the
   segmentor never receives gradients (``requires_grad`` off);
4. nothing is resumed unless ``resume=True`` names the run folder's own
   ``last.pt``.

Run folder: ``config.yaml``, ``metrics.jsonl`` (per step), ``epochs.jsonl``
(per epoch, including epoch 0 before training: losses, the segmentor's recall of
fake tumours on fixed probe patches, QC acceptance), ``samples/epoch_NNNN.png``
(original / synthetic / accepted), ``last.pt`` (resume state),
``generator.pt`` (for ``synthesize --generator`` and Stage 2), ``best_realism.pt`` (with
``--realism-real``), ``final.json``, ``tb/``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..checkpoints import load_model
from ..config import Config, QCConfig
from ..errors import InputError
from ..generator import apply_difference, difference_map
from ..io import write_bytes_atomic
from ..lesions.context import CONTEXT_PAD_HU, centred_placement
from ..lesions.features import crops_from_datalist, extract_crops, lesion_features
from ..models import FAKE, REAL, build_discriminator, build_generator
from ..organs import get_organ
from ..quality import judge_patch, predicted_tumour
from ..transforms import PrepareFakeTumourd, PrepareProfileTumourd, train_transforms
from .checks import checked_synthesis_inputs
from .data import MixedStepDataset, batch_tensors, collate
from .run import Run, autocast, nan_to_none

PROBE_SEED_OFFSET = 1_000_003  # probe patches come from their own random stream
REALISM_SEED_OFFSET = 2_000_029  # and so do the realism probe's
LOSSES = ("loss_g", "loss_adv", "loss_seg", "loss_d")
# train-synth says this once, when a run starts (measured on real CT; docs/benchmarks/realism-lung.md)
GENERATOR_OPTIONAL = ("note: a generator is optional: profile-styled synthesis (synthesize --profile) needs none, and on "
                      "real CT a trained residual has not made lesions harder to tell from real nodules (measured: "
                      "docs/benchmarks/realism-lung.md, 'A generator that learns')")


# ----------------------------------------------------------------------------- losses
def masked_mean(p: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """<p>_mask over the whole batch: sum(p * mask) / (|mask| + eps), as the released code."""
    return (p * mask).sum() / (mask.sum() + eps)


@contextlib.contextmanager
def frozen(module: torch.nn.Module):
    """Parameters of ``module`` do not require gradients inside the block."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, f in zip(module.parameters(), flags):
            p.requires_grad_(f)


def lesion_views(x: torch.Tensor, mask: torch.Tensor, spacing, pad: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each lesion of a batch in one geometry: for the patches of ``x`` (B, C, X, Y, Z) whose ``mask``
    (B, 1, X, Y, Z) has a lesion, that lesion's context box
    (:func:`freetumor.lesions.context.centred_placement`: bounding box + 3.5 mm in-plane, no slice
    margin, centred on the lesion's centre of mass, ``pad`` elsewhere; ``spacing`` the patches' mm),
    stacked, with the mask moved alike. A real lesion from a small padded crop and a fake one in a
    whole chest so come in the same box, spacing and padding. Without any lesion in the batch, ``x``
    and ``mask`` as they are (the masked means are then over no voxel). Differentiable in ``x``.
    """
    present = (mask > 0.5).flatten(1).any(dim=1).cpu().numpy()
    if not present.any():
        return x, mask
    m = (mask > 0.5).cpu().numpy()[:, 0]
    size = tuple(x.shape[2:])
    xs, ms = [], []
    for b in np.flatnonzero(present):
        src, dst = centred_placement(m[b], spacing, size)
        xo = torch.full_like(x[b], pad)
        mo = torch.zeros_like(mask[b])
        xo[(slice(None), *dst)] = x[b][(slice(None), *src)]
        mo[(slice(None), *dst)] = mask[b][(slice(None), *src)]
        xs.append(xo)
        ms.append(mo)
    return torch.stack(xs), torch.stack(ms)


class Stage1:
    """The networks and the two optimisation steps of Stage 1 (no data, no logging).

    Args:
        cfg: resolved config (``synth`` section, organ region).
        segmentor: the frozen segmentor and its config.
        device: torch device.
    """

    def __init__(self, cfg: Config, segmentor: tuple[torch.nn.Module, Config], device):
        self.cfg = cfg
        self.device = device
        s = cfg.synth
        region = cfg.organ_info.region
        self.profile_mode = s.lesions == "profile"
        # profile lesions: x' = x_profile + W * G(x_profile), a residual on the profile's render
        self.sign = 1 if self.profile_mode else cfg.organ_info.sign
        self.adv_weight = s.adv_weight if s.adv_weight is not None else (0.1 if region == "abdomen" else 0.5)
        self.blur = (s.blur_sigma, s.blur_kernel)
        self.d_context = s.d_context
        self.spacing = tuple(float(v) for v in cfg.data.spacing)
        lo, hi = (float(v) for v in cfg.data.hu_window)
        self.pad = min(1.0, max(0.0, (CONTEXT_PAD_HU - lo) / (hi - lo)))  # -1000 HU, windowed
        self.generator = build_generator(cfg).to(device)
        self.discriminator = build_discriminator(cfg).to(device)
        self.seg, self.seg_cfg = segmentor
        self.seg.to(device).eval()
        for p in self.seg.parameters():
            p.requires_grad_(False)
        self.tumour = list(self.seg_cfg.tumour_classes)
        betas = tuple(s.betas)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=s.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=s.lr, betas=betas)
        self.amp = device.type == "cuda" and cfg.train.amp
        self.scaler_g = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.scaler_d = torch.amp.GradScaler("cuda", enabled=self.amp)
        # DDP wrappers (set by the trainer); the plain modules are used for frozen forwards.
        self.g_train: torch.nn.Module = self.generator
        self.d_train: torch.nn.Module = self.discriminator

    def source(self, batch: dict) -> torch.Tensor:
        """The patch the generator sees and the map is added to: the image, or with profile lesions
        the image with the profile's lesion rendered in it (``profile``)."""
        return batch["profile"] if self.profile_mode else batch["image"]

    def synthesise(self, x, weight, channel, generator=None):
        """(x', D~) for a batch (``x`` = :meth:`source`); ``generator`` defaults to the training wrapper.

        Rules: D~ = blur(G(x)[organ channel]). Profile lesions: D~ = G(x_profile), the residual
        (unblurred: it may add texture), zero for an untrained generator.
        """
        g = generator if generator is not None else self.g_train
        if self.profile_mode:
            dmap = g(x)
        else:
            dmap = difference_map(g, x, channel.clamp(min=0), *self.blur)
        return apply_difference(x, weight, dmap, self.sign), dmap

    def seg_tumour_prob(self, x):
        p = torch.softmax(self.seg(x).float(), dim=1)
        return p[:, self.tumour].sum(1, keepdim=True), p

    def real_mask(self, label: torch.Tensor) -> torch.Tensor:
        """Real-tumour voxels R (any organ's tumour class) as a float mask."""
        real = torch.zeros_like(label, dtype=torch.float32)
        for c in self.tumour_classes_in_labels():
            real = real + (label == c).float()
        return real

    def d_view(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the discriminator reads of the lesion ``mask`` of each patch of ``x``: with
        ``synth.d_context: lesion_box`` (the default) :func:`lesion_views`, with ``patch`` the
        patches as they are."""
        if self.d_context == "patch":
            return x, mask
        return lesion_views(x, mask, self.spacing, self.pad)

    def g_step(self, batch: dict) -> dict:
        """One generator step: D and the segmentor frozen. Returns losses, x', D~ and the segmentor's call."""
        x, weight, fake, channel = self.source(batch), batch["weight"], batch["fake"], batch["channel"]
        self.opt_g.zero_grad(set_to_none=True)
        with frozen(self.discriminator), autocast(self.cfg, self.device):
            xf, dmap = self.synthesise(x, weight, channel)
            xv, fv = self.d_view(xf, fake)
            p_d = torch.softmax(self.discriminator(xv).float(), dim=1)
            loss_adv = 1.0 - masked_mean(p_d[:, REAL:REAL + 1], fv)
            p_tum, p_seg = self.seg_tumour_prob(xf)
            loss_seg = 1.0 - masked_mean(p_tum, fake)
            loss_g = self.adv_weight * loss_adv + loss_seg
        self.scaler_g.scale(loss_g).backward()
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        with torch.no_grad():
            pred = predicted_tumour(p_seg, self.tumour, keepdim=True)
        return {"loss_g": float(loss_g.detach()), "loss_adv": float(loss_adv.detach()),
                "loss_seg": float(loss_seg.detach()), "dmap": dmap.detach(), "pred": pred}

    def d_step(self, batch: dict, dmap: torch.Tensor) -> dict:
        """One discriminator step on x' made with the (detached) map of the G step."""
        x, weight, fake = self.source(batch), batch["weight"], batch["fake"]
        real = self.real_mask(batch["label"])
        self.opt_d.zero_grad(set_to_none=True)
        with autocast(self.cfg, self.device):
            xd = apply_difference(x, weight, dmap.detach(), self.sign)
            if self.d_context == "patch":
                q = torch.softmax(self.d_train(xd).float(), dim=1)
                q_fake, q_real, fv, rv = q, q, fake, real
            else:  # one forward pass over both views: each lesion in its own context box
                xf_v, fv = self.d_view(xd, fake)
                xr_v, rv = self.d_view(xd, real)
                q = torch.softmax(self.d_train(torch.cat([xf_v, xr_v])).float(), dim=1)
                q_fake, q_real = q[:len(xf_v)], q[len(xf_v):]
            loss_d = 0.5 * ((1.0 - masked_mean(q_fake[:, FAKE:FAKE + 1], fv))
                            + (1.0 - masked_mean(q_real[:, REAL:REAL + 1], rv)))
        self.scaler_d.scale(loss_d).backward()
        self.scaler_d.step(self.opt_d)
        self.scaler_d.update()
        return {"loss_d": float(loss_d.detach()), "xf": xd.detach()}

    def step(self, batch: dict) -> dict:
        """One G step then one D step; returns losses and per-patch outputs for logging."""
        g = self.g_step(batch)
        d = self.d_step(batch, g.pop("dmap"))
        return {**g, **d, "x": batch["image"].detach()}

    def tumour_classes_in_labels(self) -> list[int]:
        return list(self.cfg.tumour_classes)

    def state(self) -> dict:
        return {"opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "scaler_g": self.scaler_g.state_dict() if self.amp else None,
                "scaler_d": self.scaler_d.state_dict() if self.amp else None}

    def load_state(self, st: dict) -> None:
        self.opt_g.load_state_dict(st["opt_g"])
        self.opt_d.load_state_dict(st["opt_d"])
        if self.amp and st.get("scaler_g"):
            self.scaler_g.load_state_dict(st["scaler_g"])
            self.scaler_d.load_state_dict(st["scaler_d"])


class _Pair(torch.nn.Module):
    """Generator and discriminator in one state dict (the resume checkpoint)."""

    def __init__(self, generator, discriminator):
        super().__init__()
        self.generator, self.discriminator = generator, discriminator


# ----------------------------------------------------------------------------- quality on patches
def patch_decisions(out: dict, batch: dict, cfg: Config, settings: QCConfig) -> list[dict]:
    """QC decision per patch with a fake tumour: segmentor recall + cheap checks (in HU)."""
    cls_to_organ = {c: get_organ(n) for n, (c, _t) in cfg.organ_classes.items()}
    tumour_of = {c: t for _n, (c, t) in cfg.organ_classes.items()}
    spacing = tuple(cfg.data.spacing)
    fake = batch["fake"].cpu().numpy()[:, 0] > 0.5
    label = batch["label"].cpu().numpy()[:, 0]
    x = out["x"].float().cpu().numpy()[:, 0]
    xf = out["xf"].float().cpu().numpy()[:, 0]
    pred = out["pred"].cpu().numpy()[:, 0]
    ocls = batch["organ_class"].cpu().numpy().reshape(-1)
    rows = []
    for b in range(fake.shape[0]):
        if not fake[b].any() or int(ocls[b]) not in cls_to_organ:
            rows.append(None)
            continue
        organ = cls_to_organ[int(ocls[b])]
        host = (label[b] == ocls[b]) | (label[b] == tumour_of[int(ocls[b])])
        dec = judge_patch(x[b], xf[b], fake[b], host, organ, settings, cfg.data.hu_window, spacing, pred[b])
        rows.append({"organ": organ.name, **dec.as_record()})
    return rows


def sample_grid_png(x: np.ndarray, xf: np.ndarray, fake: np.ndarray, rows: list[dict | None], title: str) -> bytes:
    """PNG: one row per patch, columns original / synthetic / accepted (axial slice through the tumour)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # deferred: matplotlib is heavy (grids only)
    from matplotlib.figure import Figure  # deferred: as above

    n = max(1, len(rows))
    fig = Figure(figsize=(7.5, 2.5 * n))
    FigureCanvasAgg(fig)  # a canvas of this figure's own: no pyplot, no process-wide backend
    axes = fig.subplots(n, 3, squeeze=False)
    for b in range(n):
        if b >= len(rows):
            break
        m = fake[b]
        z = int(np.argmax(m.sum(axis=(0, 1)))) if m.any() else m.shape[2] // 2
        r = rows[b]
        ok = bool(r and r["accepted"])
        panels = [(x[b], "original"), (xf[b], "synthetic"), (xf[b] if ok else x[b], "accepted" if ok else "rejected")]
        for k, (im, name) in enumerate(panels):
            ax = axes[b, k]
            ax.imshow(np.rot90(im[:, :, z]), cmap="gray", vmin=0, vmax=1)
            if k == 1 and m.any():
                ax.contour(np.rot90(m[:, :, z]).astype(float), levels=[0.5], colors="yellow", linewidths=0.6)
            label = name if r is None or k == 0 else f"{name} (recall {r['recall']:.2f})"
            ax.set_title(label, fontsize=8, color=("green" if ok else "red") if k == 2 and r else "black")
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (2.5 * n)))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()


# ----------------------------------------------------------------------------- trainer
def _load_segmentor(path, cfg: Config, device):
    model, seg_cfg = load_model(path, map_location=device)
    for key in ("spacing", "hu_window"):
        a, b = getattr(seg_cfg.data, key), getattr(cfg.data, key)
        if not np.allclose(a, b):
            raise InputError(path, f"segmentor was trained with data.{key} {a}, the config asks for {b}; "
                                   "Stage 1 must use the segmentor's preprocessing")
    if seg_cfg.organ_info.region != cfg.organ_info.region:
        raise InputError(path, f"segmentor is for {seg_cfg.organ}, the config for {cfg.organ}")
    return model, seg_cfg


def _batch_to(batch: dict, device) -> dict:
    keys = ("image", "label", "fake", "weight", "channel", "organ_class") + (("profile",) if "profile" in batch else ())
    return dict(zip(keys, batch_tensors(batch, device, keys)))


def probe_batch(cfg: Config, labelled, unlabelled, transform, n: int | None = None,
                offset: int = PROBE_SEED_OFFSET) -> dict | None:
    """The fixed probe patches (their own seed stream; identical for a resumed run): ``n`` patches
    with a fake tumour (default ``synth.probe_samples``)."""
    n = cfg.synth.probe_samples if n is None else n
    if n == 0:
        return None
    ds = MixedStepDataset(labelled, unlabelled, transform, cfg.train.seed + offset,
                          cfg.synth.labelled_fraction)
    patches = []
    i = 0
    while len(patches) < n and i < 4 * n:
        patches.extend(p for p in ds[i] if float(p["fake"].sum()) > 0)
        i += 1
    return collate([patches[:n]]) if patches else None


@torch.no_grad()
def evaluate_probe(stage: Stage1, probe: dict | None, cfg: Config, settings: QCConfig):
    """Recall and acceptance of the current generator on the probe patches (no training)."""
    if probe is None:
        return {}, None
    b = _batch_to(probe, stage.device)
    stage.generator.eval()
    xf, _ = stage.synthesise(stage.source(b), b["weight"], b["channel"], generator=stage.generator)
    stage.generator.train()
    _p, p_seg = stage.seg_tumour_prob(xf)
    pred = predicted_tumour(p_seg, stage.tumour, keepdim=True)
    out = {"x": b["image"], "xf": xf, "pred": pred}
    rows = patch_decisions(out, b, cfg, settings)
    scored = [r for r in rows if r]
    res = {"probe_patches": len(scored),
           "probe_recall": float(np.mean([r["recall"] for r in scored])) if scored else None,
           "probe_accepted": float(np.mean([r["accepted"] for r in scored])) if scored else None}
    return res, (out, b, rows)


class Realism:
    """The realism AUC of the current generator each epoch (``train-synth --realism-real``).

    The real side: radiomic features (:func:`freetumor.lesions.features.lesion_features`, the
    organ's HU window) of every lesion of a held-aside datalist of real lesions, computed once. The
    synthetic side: the lesions the current generator makes on ``synth.realism_samples`` fixed
    probe patches (their own seed stream). The score is the machine Visual Turing Test's 5-fold
    cross-validated AUC (0.5: indistinguishable).
    """

    def __init__(self, real_datalist, cfg: Config, probe: dict | None):
        self.window = tuple(float(v) for v in cfg.data.hu_window)
        crops = crops_from_datalist(real_datalist, cfg.organ)
        if len(crops) < 5:
            raise InputError(str(real_datalist), f"{len(crops)} real {cfg.organ} lesion(s); the realism AUC "
                                                 "needs at least 5")
        self.real = [lesion_features(c, window=self.window) for c in crops]
        self.probe = probe
        self.spacing = tuple(float(v) for v in cfg.data.spacing)
        self.seed = cfg.train.seed

    def features(self, xf: np.ndarray, fake: np.ndarray) -> list[dict]:
        """Features of the lesion of each patch: ``xf`` (B, X, Y, Z) windowed, ``fake`` its labels."""
        from ..io import Volume  # deferred: only with a realism set

        lo, hi = self.window
        affine = np.diag([*self.spacing, 1.0])
        out = []
        for b in range(xf.shape[0]):
            if not fake[b].any():
                continue
            img = Volume(xf[b].astype(np.float32) * np.float32(hi - lo) + np.float32(lo), affine)
            lab = Volume(fake[b].astype(np.uint8), affine)
            crops = extract_crops(img, lab, 1, "synthetic", f"probe{b}", min_voxels=8)
            if crops:
                out.append(lesion_features(max(crops, key=lambda c: c.meta["voxels"]), window=self.window))
        return out

    @torch.no_grad()
    def score(self, stage: Stage1) -> dict:
        """``realism_auc`` (and its CI and lesion count) of the current generator; ``{}`` without probe lesions."""
        from ..evaluation.realism import machine_vtt  # deferred: realism loads scikit-learn

        if self.probe is None:
            return {}
        b = _batch_to(self.probe, stage.device)
        stage.generator.eval()
        xf, _ = stage.synthesise(stage.source(b), b["weight"], b["channel"], generator=stage.generator)
        stage.generator.train()
        syn = self.features(xf.float().cpu().numpy()[:, 0], b["fake"].cpu().numpy()[:, 0] > 0.5)
        if len(syn) < 5:
            return {"realism_auc": None, "realism_lesions": len(syn)}
        vtt = machine_vtt(self.real, syn, folds=5, seed=self.seed)
        return {"realism_auc": round(float(vtt["auc"]), 4),
                "realism_auc_ci95": [round(float(v), 4) for v in vtt["auc_ci95"]],
                "realism_lesions": len(syn)}


def step_values(res: dict, scored: list[dict]) -> dict[str, float]:
    """The per-step numbers of ``metrics.jsonl``: losses, mean recall and acceptance (NaN: no fake)."""
    vals = {k: res[k] for k in LOSSES}
    vals["recall"] = float(np.mean([r["recall"] for r in scored])) if scored else float("nan")
    vals["accepted"] = float(np.mean([r["accepted"] for r in scored])) if scored else float("nan")
    return vals


def accumulate(acc: dict, vals: dict[str, float], scored: list[dict]) -> None:
    """Add one step to the epoch's running sums (kept in ``last.pt`` for an exact resume)."""
    for k in LOSSES:
        acc[k] = acc.get(k, 0.0) + vals[k]
    acc["n"] = acc.get("n", 0) + 1
    if scored:
        acc["recall"] = acc.get("recall", 0.0) + sum(r["recall"] for r in scored)
        acc["accepted"] = acc.get("accepted", 0.0) + sum(r["accepted"] for r in scored)
        acc["scored"] = acc.get("scored", 0) + len(scored)


def log_epoch(run: Run, stage: Stage1, probe: dict | None, path: Path, acc: dict,
              realism: Realism | None = None) -> dict:
    """The ``epochs.jsonl`` line at the current step (epoch means of ``acc``, the probe's recall and
    acceptance, with ``realism`` the realism AUC), its TensorBoard scalars and the probe's sample
    grid; returns the line."""
    res, shown = evaluate_probe(stage, probe, run.cfg, run.cfg.qc)
    if realism is not None:
        res.update(realism.score(stage))
    step, n = run.step, max(1, acc.get("n", 0))
    rec = {"epoch": step // run.cfg.synth.epoch_steps, "step": step}
    for k in LOSSES:
        rec[k] = acc[k] / n if acc.get("n") else None
    rec["train_recall"] = acc["recall"] / acc["scored"] if acc.get("scored") else None
    rec["train_accepted"] = acc["accepted"] / acc["scored"] if acc.get("scored") else None
    rec.update(res)
    run.append(path, rec)
    run.scalars("epoch", {k: v for k, v in rec.items() if k not in ("epoch", "step") and not isinstance(v, list)},
                step)
    if shown is not None:
        o, b, rows = shown
        png = sample_grid_png(o["x"].cpu().numpy()[:, 0], o["xf"].cpu().numpy()[:, 0],
                              b["fake"].cpu().numpy()[:, 0] > 0.5, rows,
                              f"epoch {rec['epoch']} (step {step}): original / synthetic / accepted")
        write_bytes_atomic(run.out / "samples" / f"epoch_{rec['epoch']:04d}.png", png)
    return rec


def probe_summary(epochs_path: Path) -> dict:
    """The probe's recall and acceptance at the first and the last logged epoch."""
    rows = [json.loads(ln) for ln in epochs_path.read_text().splitlines() if ln]
    if not rows:
        return {}
    return {f"probe_{k}_{end}": rows[i].get(f"probe_{k}")
            for end, i in (("start", 0), ("end", -1)) for k in ("recall", "accepted")}


def train_synthesis(
    cfg: Config,
    labelled: str | os.PathLike,
    unlabelled: str | os.PathLike | None,
    segmentor: str | os.PathLike,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    log: Callable[[str], None] = print,
    progress: bool = True,
    profile=None,
    realism_real: str | os.PathLike | None = None,
    skip_bad_cases: bool = False,
    checked: tuple | None = None,
) -> dict:
    """Stage-1 training; returns the summary written to ``final.json``.

    With ``profile`` (a lesion profile of the config's organ: JSON path, ``builtin:<name>`` or a
    :class:`~freetumor.lesions.profile.LesionProfile`) the fake lesions are the profile's renders and the
    generator learns a residual on them (``synth.lesions`` is set to ``profile``). With
    ``realism_real`` (a datalist of held-aside real lesions) each epoch line also has the realism
    AUC of the probe lesions, and ``best_realism.pt`` keeps the generator with the lowest one.
    ``checked``: what :func:`~freetumor.training.checks.checked_synthesis_inputs` returned for these
    arguments (``train-synth`` checks them before PyTorch loads), not checked again.
    """
    # the profile (one-line errors: wrong organ, bad file) and every case, checked before any output
    cfg, prof, lab_entries, unl_entries = checked if checked is not None else checked_synthesis_inputs(
        cfg, labelled, unlabelled, profile, realism_real, skip_bad_cases, log)
    s = cfg.synth
    run = Run(out, cfg, resume=resume, log=log)
    seg = _load_segmentor(segmentor, cfg, run.device)

    torch.manual_seed(cfg.train.seed)
    stage = Stage1(cfg, seg, run.device)
    pair = _Pair(stage.generator, stage.discriminator)
    extra = run.restore(pair, "synthesis-run")
    if run.resume:
        stage.load_state(extra["stage"])
    epoch_acc = dict(extra.get("epoch_acc") or {})
    stage.g_train, stage.d_train = run.parallel(stage.generator), run.parallel(stage.discriminator)

    # Stage-1 patches are centred on organ or tumour voxels (no background-centred crops).
    prepare = PrepareProfileTumourd(cfg, prof) if profile is not None else PrepareFakeTumourd(cfg)
    transform = train_transforms(cfg.replace(**{"data.pos": 1.0, "data.neg": 0.0}), synthesis=prepare)
    probe = probe_batch(cfg, lab_entries, unl_entries, transform) if run.main else None
    realism = None
    if realism_real is not None and run.main:
        realism = Realism(realism_real, cfg, probe_batch(cfg, lab_entries, unl_entries, transform, s.realism_samples,
                                                         REALISM_SEED_OFFSET))
    best = dict(extra.get("best_realism") or {})
    # Only now, with the segmentor, the checkpoint to resume and the realism lesions accepted, is the
    # run folder made or touched (a refusal above leaves it as it was).
    run.create(lambda folder: (folder / "samples").mkdir(exist_ok=True))
    if run.main:
        log(GENERATOR_OPTIONAL)
    metrics_path, epochs_path = run.open_logs("metrics.jsonl", "epochs.jsonl")

    def keep_best(rec: dict) -> None:
        """``best_realism.pt``: the generator of the lowest realism AUC so far (ties: the earlier)."""
        auc = rec.get("realism_auc")
        if auc is not None and (not best or auc < best["realism_auc"]):
            best.update(epoch=rec["epoch"], step=rec["step"], realism_auc=auc)
            run.save(run.out / "best_realism.pt", stage.generator, kind="generator")

    if run.main and run.start == 0:
        first = log_epoch(run, stage, probe, epochs_path, {}, realism)
        keep_best(first)
        log(f"step 0: probe recall {first.get('probe_recall')}, accepted {first.get('probe_accepted')}"
            + (f", realism AUC {first.get('realism_auc')}" if realism is not None else ""))
    ds = MixedStepDataset(lab_entries, unl_entries, transform, cfg.train.seed, s.labelled_fraction,
                          cache=cfg.data.cache)
    loader = run.loader(ds, s.max_steps)
    if progress:
        run.progress("train-synth")

    def checkpoint() -> None:
        run.save(run.last, pair, {"stage": stage.state(), "epoch_acc": epoch_acc, "best_realism": best},
                 kind="synthesis-run")
        run.save(run.out / "generator.pt", stage.generator, kind="generator")

    for step, raw in run.steps(loader):
        batch = _batch_to(raw, run.device)
        res = stage.step(batch)
        scored = [r for r in patch_decisions(res, batch, cfg, cfg.qc) if r]
        vals = run.mean(step_values(res, scored))
        if run.main:
            run.append(metrics_path, {"step": step, **nan_to_none(vals), "fakes": len(scored)})
            accumulate(epoch_acc, vals, scored)
            if run.due(s.log_every):
                run.scalars("train", nan_to_none(vals), step)
            run.tick(g=f"{vals['loss_g']:.3f}", d=f"{vals['loss_d']:.3f}")
            if run.due(s.epoch_steps):
                rec = log_epoch(run, stage, probe, epochs_path, epoch_acc, realism)
                keep_best(rec)
                epoch_acc.clear()
            if run.due(s.checkpoint_every):
                checkpoint()

    summary = {"steps": run.step, "world_size": run.world, "device": str(run.device),
               "generator_sha256": run.digests(stage.generator)}
    if run.main:
        summary.update(probe_summary(epochs_path))
        if profile is not None:
            summary["profile"] = prof.name or str(profile)
        if realism is not None:
            summary["best_realism"] = dict(best) or None
            summary["realism_real"] = str(realism_real)
        if not (run.out / "generator.pt").exists():
            checkpoint()
    return run.finish(summary)
