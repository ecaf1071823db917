"""Sizes, surfaces and visibility of synthetic lung lesions against held-out real nodules (issue 23, shapes).

Data (all Real CT, from ../shared/datasets; exits with a message when absent):

* real lesions: the LIDC-IDRI nodule crops (``lidc_nodule_vois``) split patient-wise exactly as
  ``benchmarks/realism_lung.py`` splits them (seed ``--seed``): the profile is the *fit half*'s rows of
  ``builtin:lung`` (same measurement, same crop order as ``freetumor lesions fit``; the rows of the other
  patients are left out), the comparison set is held-out quarter **A** (never fitted on);
* hosts: the whole LIDC chests LIDC-IDRI-0001 / -0003 (0.7 x 0.7 x 2.5 mm), threshold lungs minus their own
  nodules grown by 5 mm (``realism_lung.host_setup``).

For each synthetic lesion (``draw_lesion``, the renderer of the checkout on ``PYTHONPATH``): the label's
equivalent diameter on the host grid, its *half-maximum* diameter (the region at least half-way from the
host's HU to the core's, on the 1 mm crop: what a reader sees as the lesion; the same function measures the
real crops), its surface roughness and solidity as ``lesions fit`` measures them, the peak occupancy, and
(if the renderer has it) its visibility. ``--tag`` names the run in ``--out`` (runs of other tags are kept),
so the renderer before and after a change can be compared on the same draws' seeds.
``--figure PATH`` writes real vs synthetic nodules side by side (axial slice through each centre, same
field of view and window, no outlines).

    PYTHONPATH=src python benchmarks/lung_shapes.py --tag after --per-host 24 --figure docs/images/lung_shapes.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import portable  # noqa: E402
from realism_lung import DATASETS, REPO, host_setup, hosts, lidc_voi_entries, split_patients  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

WINDOW = (-1000.0, 500.0)
FOV_MM = 40.0
PIXELS = 120


def _crop_of(image_vol, label: np.ndarray, case: str):
    from freetumor.lesions.features import extract_crops
    from freetumor.lesions.measure import FIT_MARGIN_MM, MIN_VOXELS

    crops = extract_crops(image_vol, image_vol.with_array(label.astype(np.uint8)), 1, "synthetic", case,
                          margin_mm=FIT_MARGIN_MM, min_voxels=MIN_VOXELS)
    return max(crops, key=lambda c: c.meta["voxels"]) if crops else None


def half_max_diameter(crop) -> float:
    """Equivalent diameter (mm) of the region at least half-way from the host's HU (median of the 3-8 mm shell)
    to the core's mean (voxels 1.5 mm inside the label), inside the label grown by 2 mm, connected to the core."""
    from freetumor.lesions.measure import lesion_core

    img, mask, sp = np.asarray(crop.image, np.float64), np.asarray(crop.mask, bool), crop.spacing
    out = ndimage.distance_transform_edt(~mask, sampling=sp)
    shell = ~mask & (out > 3.0) & (out <= 8.0)
    host = float(np.median(img[shell])) if shell.any() else float(np.median(img[~mask]))
    core = lesion_core(mask, sp, np.abs(img - host))
    contrast = float(img[core].mean()) - host
    if abs(contrast) < 1e-6:
        return 0.0
    half = ((img - host) / contrast >= 0.5) & (out <= 2.0)
    lab, _ = ndimage.label(half)
    keep = np.unique(lab[core & half])
    region = np.isin(lab, keep[keep > 0])
    return float((6.0 * region.sum() * float(np.prod(sp)) / math.pi) ** (1.0 / 3.0))


def roughness(crop):
    """lesions.shape surface roughness of a crop's mask (None with a checkout that predates lesions.shape)."""
    try:
        from freetumor.lesions.shape import shape_descriptors
    except ImportError:  # the renderer before issue 23
        return None
    return float(shape_descriptors(crop.mask, crop.spacing)["surface_roughness"])


def fit_half_profile(fit_e: list[dict]):
    """builtin:lung's rows of the fit-half patients (its rows are one per nodule, in the crop order of
    ``lesions fit`` over the sorted crop files: counted here from the labels)."""
    from freetumor.io import load_volume
    from freetumor.lesions.measure import MIN_VOXELS
    from freetumor.lesions.profile import LesionProfile, builtin_profile

    full = builtin_profile("lung")
    owner = []
    for e in lidc_voi_entries():
        n = Path(e["image"]).name
        lab = load_volume(e["label"]).array == 1
        comps, k = ndimage.label(lab, structure=np.ones((3, 3, 3), bool))
        sizes = np.bincount(comps.ravel(), minlength=k + 1)[1:]
        owner += [n] * int(np.count_nonzero(sizes >= MIN_VOXELS))
    if len(owner) != len(full.rows):
        raise SystemExit(f"builtin:lung has {len(full.rows)} rows, the crops {len(owner)} lesions: refit it")
    fit_names = {Path(e["image"]).name for e in fit_e}
    rows = [r for r, n in zip(full.rows, owner) if n in fit_names]
    opt = getattr(full, "optional", ())
    src = {"split": "fit half of the shared LIDC crops (rows of builtin:lung)"}
    prof = LesionProfile.from_rows("lung", rows, src, "lung-fit-half", opt) if opt else \
        LesionProfile.from_rows("lung", rows, src, "lung-fit-half")
    if getattr(full, "attachment", None):  # measured on the fit half only (benchmarks/lung_attachment.py)
        prof = prof.with_attachment(full.attachment)
    return prof, full, owner


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-host", type=int, default=24)
    ap.add_argument("--hosts", default="lidc-idri-0001,lidc-idri-0003")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", required=True)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "lung_shapes.json")
    ap.add_argument("--figure", type=Path)
    ap.add_argument("--lungs-cache", type=Path, help="folder to keep the hosts' threshold lung masks in")
    args = ap.parse_args()
    vois = DATASETS / "lidc_nodule_vois"
    if not vois.is_dir():
        print(f"real CT not available: {vois}", file=sys.stderr)
        return 2
    from freetumor.io import Volume, load_volume
    from freetumor.lesions import render
    from freetumor.lesions.features import extract_crops
    from freetumor.lesions.measure import FIT_MARGIN_MM, MIN_VOXELS, measure_crop
    t0 = time.time()
    entries = lidc_voi_entries()
    fit_e, a_e, _ = split_patients(entries, args.seed)
    profile, full, owner = fit_half_profile(fit_e)
    a_names = {Path(e["image"]).name for e in a_e}
    cols = full.columns if hasattr(full, "columns") else None
    a_rows = np.array([r for r, n in zip(full.rows, owner) if n in a_names])
    real = {"diameter_mm": a_rows[:, 0].tolist()}
    if cols and "surface_roughness" in cols:
        real["surface_roughness"] = a_rows[:, cols.index("surface_roughness")].tolist()
    real["solidity"] = a_rows[:, 3].tolist()
    real_crops = []
    for e in a_e:
        real_crops += extract_crops(load_volume(e["image"]), load_volume(e["label"]), 1, "real", Path(e["image"]).name,
                                    margin_mm=FIT_MARGIN_MM, min_voxels=MIN_VOXELS)
    real["half_max_diameter_mm"] = [half_max_diameter(c) for c in real_crops]

    syn: dict[str, list] = {k: [] for k in ("drawn_diameter_mm", "diameter_mm", "half_max_diameter_mm",
                                            "surface_roughness", "solidity", "peak_occupancy", "cnr", "redrawn")}
    placed: list[str] = []
    views = []
    for i, h in enumerate(hosts()):
        if h["name"] not in args.hosts.split(","):
            continue
        image, grid, lungs, lesions, allowed = host_setup(h, args.lungs_cache / f"lungs_{h['name']}.nii.gz" if args.lungs_cache else None)
        rng = np.random.default_rng(args.seed + i)
        arr = np.asarray(image.array, np.float32)
        for k in range(args.per_host):
            r, params, _ = render.draw_lesion(profile, arr, allowed, grid, rng, protect=lesions)
            if r is None:
                continue
            pad = [int(math.ceil(25.0 / s)) for s in grid.spacing]
            big = tuple(slice(max(0, b.start - p), min(n, b.stop + p)) for b, p, n in zip(r.box, pad, image.shape))
            vals = arr[big].copy()
            inner = tuple(slice(b.start - g.start, b.stop - g.start) for b, g in zip(r.box, big))
            vals[inner] = r.values
            lab = np.zeros(vals.shape, bool)
            lab[inner] = r.label
            shift = np.eye(4)
            shift[:3, 3] = [g.start for g in big]
            sub = Volume(vals, image.affine @ shift)
            crop = _crop_of(sub, lab, f"{h['name']}#{k}")
            if crop is None:
                continue
            m = measure_crop(crop)
            syn["drawn_diameter_mm"].append(float(params["diameter_mm"]))
            syn["diameter_mm"].append(float((6.0 * r.label.sum() * np.prod(grid.spacing) / math.pi) ** (1 / 3)))
            syn["half_max_diameter_mm"].append(half_max_diameter(crop))
            syn["surface_roughness"].append(m["surface_roughness"] if "surface_roughness" in m else roughness(crop))
            syn["solidity"].append(float(m["solidity"]))
            syn["peak_occupancy"].append(float(r.occupancy.max()))
            syn["cnr"].append(r.record.get("visibility", {}).get("cnr"))
            syn["redrawn"].append(r.record.get("redrawn"))
            if "attachment" in r.record:
                placed.append(r.record["attachment"]["placed"])
            views.append((crop, sub))
        print(f"{h['name']}: {len(syn['diameter_mm'])} lesions so far, {time.time() - t0:.0f} s", flush=True)

    def stats(v):
        v = np.asarray([x for x in v if x is not None], np.float64)
        if not v.size:
            return None
        return {"n": int(v.size), "min": round(float(v.min()), 3), "p5": round(float(np.percentile(v, 5)), 3),
                "median": round(float(np.median(v)), 3), "p95": round(float(np.percentile(v, 95)), 3)}

    redrawn = [x for x in syn["redrawn"] if x]
    run = {
        "command": "PYTHONPATH=src python benchmarks/lung_shapes.py " + " ".join(sys.argv[1:]),
        "hosts": args.hosts.split(","),
        "synthetic": {k: stats(v) for k, v in syn.items() if k != "redrawn"},
        "redraws": {"invisible": sum(x.get("invisible", 0) for x in redrawn),
                    "below_minimum_size": sum(x.get("below_minimum_size", 0) for x in redrawn)} if redrawn else None,
        "real_held_out_a": {k: stats(v) for k, v in real.items()},
        **({"attachment_placed": {k: placed.count(k) for k in ("juxtapleural", "juxtavascular", "free")},
            "attachment_profile": {k: profile.attachment[k] for k in ("juxtapleural", "juxtavascular")}}
           if placed else {}),
        "seconds": round(time.time() - t0, 1),
    }
    doc = json.loads(args.out.read_text()) if args.out.exists() else {}
    doc.update({
        "data": "Real CT only: LIDC-IDRI nodule crops split patient-wise as benchmarks/realism_lung.py (seed "
                f"{args.seed}); profile = builtin:lung rows of the fit half ({len(profile.rows)} lesions); real "
                f"comparison = held-out quarter A ({len(a_rows)} lesions); hosts = whole LIDC chests (2.5 mm)",
        "definitions": {"diameter_mm": "equivalent diameter of the label (synthetic: on the host grid)",
                        "half_max_diameter_mm": "equivalent diameter of the region at least half-way from host to "
                                                "core HU on the 1 mm crop (the same function for real and synthetic)",
                        "surface_roughness": "lesions.shape surface roughness on the 1 mm crop (lesions fit)",
                        "cnr": "lesions.render.visibility of the centre slice (renderers that have it)"}})
    doc.setdefault("runs", {})[args.tag] = run
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(portable(json.dumps(doc, indent=1)) + "\n")
    print(json.dumps(run, indent=1))
    if args.figure:
        figure(real_crops, views, args.figure, args.tag)
    return 0


def figure(real_crops, views, path: Path, tag: str) -> None:
    """Real (top) and synthetic (bottom) nodules, 8 each spread over their sizes, axial slice through the centre,
    every panel FOV_MM wide, one window, no outlines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from freetumor.evaluation.realism.gallery import axial_view, pick_lesions
    from freetumor.io import load_volume

    small = [c for c in real_crops if c.meta["volume_ml"] * 1000 <= math.pi / 6 * 22.0 ** 3]
    reals = pick_lesions(small, 8)
    syn_small = [v for v in views if v[0].meta["volume_ml"] * 1000 <= math.pi / 6 * 22.0 ** 3]
    by_crop = {id(c): s for c, s in syn_small}
    syns = pick_lesions([c for c, _ in syn_small], 8)
    fig = Figure(figsize=(12, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    for row, (name, crops) in enumerate((("real (held-out)", reals), (f"synthetic ({tag})", syns))):
        for k, c in enumerate(crops):
            vol = load_volume(c.meta["image"]) if row == 0 else by_crop[id(c)]
            v = axial_view(c, vol, FOV_MM, PIXELS)
            ax = fig.add_subplot(2, 8, row * 8 + k + 1)
            ax.imshow(np.ma.masked_invalid(v), cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            d = (6.0 * c.meta["volume_ml"] * 1000 / math.pi) ** (1 / 3)
            ax.set_title(f"{d:.1f} mm", fontsize=7)
            if k == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle(f"Real CT: axial slice through each nodule's centre, {FOV_MM:g} mm field ({FOV_MM / PIXELS:.2f} "
                 f"mm/pixel), window {WINDOW[0]:g}..{WINDOW[1]:g} HU, no outlines", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(path))


if __name__ == "__main__":
    raise SystemExit(main())
