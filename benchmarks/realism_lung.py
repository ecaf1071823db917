"""Realism of synthetic lung lesions on real CT only: released rules vs fitted profile vs real control.

Data (all real, from ../shared/datasets; the script exits with a message when it is absent):

* real lesions: the 735 LIDC-IDRI nodule crops (``lidc_nodule_vois``), split **patient-wise**
  (seed ``--seed``) into a *fit* half (the profile is fitted on it; patients LIDC-IDRI-0001 and
  -0003, whose whole scans are hosts, are forced into it) and two disjoint *held-out* quarters
  A and B (other patients);
* hosts: the thin-slice whole LIDC chests (``lidc_full_scans``, 2.5 mm), the two pyradiomics
  chests (5 mm) and NSCLC LUNG1-001 (3 mm); lungs from the model-free mask
  (``freetumor organs --engine threshold``), each host's own lesions (grown by 5 mm) excluded.

Rows (each scored against held-out quarter A with the machine Visual Turing Test of
``freetumor realism``: 30 radiomic features (24 before the shape features) on 1 mm crops, logistic regression, 5-fold CV AUC
with bootstrap CI; 0.5 = indistinguishable):

* ``released``: the released rule-based synthesis (``Synthesizer("lung")``, size mix, the
  released code's shape convention, ``--shape-convention released``);
* ``rules_physical``: the same rules with freetumor's default physical shapes (round, sizes
  fitted to real nodules);
* ``profile``: lesions drawn from the profile fitted on the fit half
  (:mod:`freetumor.lesions.fit`) and rendered by :mod:`freetumor.lesions.render`;
* ``generator``: the same profile draws (same seeds as ``profile``, so the lesions are paired) plus the
  learned residual of a Stage-1 generator trained on real data (``train-synth --profile``): labelled =
  the fit half's nodule crops, unlabelled healthy lung = the hosts' threshold lungs (own lesions
  excluded), frozen segmentor trained by ``train-seg`` on the fit crops, realism-AUC checkpoint
  selection against held-out quarter **B** (never A, the scored set); ``best_realism.pt`` is used.
  ``--train-generator DIR`` trains it here (budget ``--gen-steps``, ``--seg-steps``; the commands are
  recorded in the JSON), ``--generator PATH`` takes a trained one;
* ``control``: real quarter B against real quarter A (the floor).

``--rows generator`` runs only that row and merges it into an existing results JSON (other rows kept).

Readers (``--readers``, default ``radiomics``): ``radiomics`` is the machine VTT above (its rows are
``rows``; the features now include the 6 ``shape_*`` descriptors of :mod:`freetumor.lesions.shape`);
``cnn`` adds the CNN reader of ``freetumor realism --reader cnn``
(:mod:`freetumor.evaluation.realism.cnn`) under ``readers.cnn``: each synthetic row against quarter
A, and its own control (quarter B vs A), at **matched slice thickness** (every crop re-sliced to the
synthetic hosts' 2.5 mm; only the LIDC hosts' lesions, the hosts with 2.5 mm slices, so no lesion is
re-sliced to thinner slices than it has) and native in-plane spacing, patient-wise (real) and
host-wise (synthetic) group k-fold.

For every row: AUC and CI (pooled over hosts, and per host), per-feature Cohen's d, and the
lesion size distribution (median equivalent diameter). Writes
``benchmarks/results/realism_lung.json`` (``--out`` for another place).

    python benchmarks/realism_lung.py [--per-host 24] [--seed 0]
    python benchmarks/realism_lung.py --rows generator --train-generator /tmp/lunggen --gen-steps 300
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import portable  # noqa: E402

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"


def patient_of(path: str) -> str:
    return Path(path).name.split("_")[0]


def lidc_voi_entries() -> list[dict]:
    """The shared LIDC nodule crops (``lidc_nodule_vois``) as datalist entries, in file-name order."""
    vois = DATASETS / "lidc_nodule_vois"
    return [{"image": str(p), "label": str(vois / "labels" / p.name)} for p in sorted((vois / "images").glob("*.nii.gz"))]


def split_patients(entries: list[dict], seed: int, forced_fit=("LIDC-IDRI-0001", "LIDC-IDRI-0003")):
    patients = sorted({patient_of(e["image"]) for e in entries})
    rng = np.random.default_rng(seed)
    order = [patients[i] for i in rng.permutation(len(patients))]
    rest = [p for p in order if p not in forced_fit]
    n_fit = len(patients) // 2 - len(forced_fit)
    fit = set(forced_fit) | set(rest[:n_fit])
    held = rest[n_fit:]
    a, b = set(held[: len(held) // 2]), set(held[len(held) // 2:])
    pick = lambda group: [e for e in entries if patient_of(e["image"]) in group]  # noqa: E731
    return pick(fit), pick(a), pick(b)


def hosts() -> list[dict]:
    out = []
    for pid in ("LIDC-IDRI-0001", "LIDC-IDRI-0003"):
        d = DATASETS / "lidc_full_scans" / pid
        out.append({"name": pid.lower(), "image": d / "image.nii.gz", "lesions": d / "label.nii.gz", "ids": (1,)})
    for k in (1, 2):
        d = DATASETS / "pyradiomics_lung"
        out.append({"name": f"pyradiomics_lung{k}", "image": d / f"lung{k}_image.nii.gz",
                    "lesions": d / f"lung{k}_label.nii.gz", "ids": (1,)})
    d = DATASETS / "nsclc_radiomics_lung1_001"
    out.append({"name": "nsclc_lung1_001", "image": d / "image.nii.gz", "lesions": d / "label.nii.gz", "ids": (1,)})
    return out


def crop_features(image, lesion_mask: np.ndarray, case: str, window) -> dict | None:
    """The radiomic features of the largest lesion of ``lesion_mask``, its diameter (``_diameter_mm``) and
    its crop (``_crop``, for the CNN reader; ``_`` keys are not features)."""
    from freetumor.lesions.features import extract_crops, lesion_features

    lab = image.with_array(lesion_mask.astype(np.uint8))
    crops = extract_crops(image, lab, 1, "synthetic", case, min_voxels=8)
    if not crops:
        return None
    crop = max(crops, key=lambda c: c.meta["voxels"])
    f = lesion_features(crop, window=window)
    f["_diameter_mm"] = float((6.0 * crop.meta["volume_ml"] * 1000.0 / np.pi) ** (1.0 / 3.0))
    crop.image = crop.mask = None  # the CNN reads the native crop only
    f["_crop"] = crop
    return f


def host_setup(h: dict, lungs_file: Path | None = None):
    """The host's image, grid, threshold lungs, own lesions and allowed lung (lungs minus the lesions
    grown by 5 mm). ``lungs_file``: the threshold lung mask cached there (read if present, else written)."""
    from freetumor.grids import Grid
    from freetumor.io import load_volume, save_volume
    from freetumor.lung_threshold import threshold_lung_mask

    image = load_volume(h["image"])
    if lungs_file is not None and Path(lungs_file).exists():
        lungs = load_volume(lungs_file).array > 0
    else:
        lungs = threshold_lung_mask(image)
        if lungs_file is not None:
            Path(lungs_file).parent.mkdir(parents=True, exist_ok=True)
            save_volume(image.with_array(lungs.astype(np.uint8)), lungs_file)
    lesions = np.isin(load_volume(h["lesions"]).array, h["ids"])
    grid = Grid.of(image)
    reach = [max(1, int(np.ceil(5.0 / s))) for s in grid.spacing]
    near = ndimage.binary_dilation(lesions, structure=np.ones([2 * r + 1 for r in reach], bool))
    allowed = lungs & ~near
    return image, grid, lungs, lesions, allowed


def lungs_cache(work: Path | None, h: dict) -> Path | None:
    return None if work is None else work / "labels" / f"lungs_{h['name']}.nii.gz"


def rule_lesions(image, lungs, lesions, n: int, seed: int, name: str, window, convention: str) -> list[dict]:
    from freetumor.shapes import OrganTooSmallError
    from freetumor.synthesis import Synthesizer

    label = image.with_array((lungs.astype(np.uint8) + lesions.astype(np.uint8) * 1).astype(np.uint8))
    label.array[lesions] = 2
    synth = Synthesizer("lung", label_map="chest3", size="mix", shape_convention=convention)
    feats = []
    for k in range(n):
        try:
            res = synth(image, label, count=1, seed=seed * 1000 + k)
        except OrganTooSmallError:
            continue
        f = crop_features(res.image, res.masks[0].full(image.shape), f"{name}-rel{k}", window)
        if f:
            feats.append(f)
    return feats


def profile_lesions(image, grid, allowed, lesions, profile, n: int, seed: int, name: str, window,
                    gen=None) -> list[dict]:
    """Features of ``n`` lesions drawn from ``profile`` into the host; with ``gen`` (a residual generator
    trained with ``train-synth --profile``) the same draws plus the generator's residual on each render."""
    from freetumor.lesions.render import draw_lesion
    from freetumor.organs import get_organ

    rng = np.random.default_rng(seed)
    feats = []
    for k in range(n):
        r, _params, _draws = draw_lesion(profile, image.array, allowed, grid, rng, protect=lesions)
        if r is None:
            continue
        out = np.asarray(image.array, np.float32).copy()
        out[r.box] = r.values
        if gen is not None:
            out[r.box] = r.values + r.occupancy * gen.for_volume(out, r.box, grid, get_organ("lung"))
        mask = np.zeros(image.shape, bool)
        mask[r.box] = r.label
        f = crop_features(image.with_array(out), mask, f"{name}-{'gen' if gen is not None else 'prof'}{k}", window)
        if f:
            f["_key"] = f"{name}#{k}"  # the draw: the profile and generator rows pair on it
            feats.append(f)
    return feats


GEN_CONFIG = ["data.spacing=[1.0,1.0,1.25]", "data.roi_size=[32,32,16]", "data.num_samples=2", "data.cache=true",
              "synth.epoch_steps=25", "synth.checkpoint_every=25", "synth.realism_samples=32", "synth.probe_samples=4"]


def write_generator_data(work: Path, fit_e: list[dict], b_e: list[dict], profile) -> dict:
    """Datalists (chest3 labels) for Stage 0 / Stage 1 on real data, written under ``work``:
    fit crops with their nodules as lesion (2), quarter-B crops likewise (the realism set), and the
    hosts with their allowed lung (threshold lungs minus their own lesions grown by 5 mm) as lung (1)."""
    from freetumor.io import load_volume, save_volume

    (work / "labels").mkdir(parents=True, exist_ok=True)

    def relabel(es, tag):
        out = []
        for e in es:
            lab = load_volume(e["label"])
            dst = work / "labels" / f"{tag}_{Path(e['label']).name}"
            if not dst.exists():
                save_volume(lab.with_array(np.where(lab.array > 0, 2, 0).astype(np.uint8)), dst)
            out.append({"image": e["image"], "label": str(dst)})
        return out

    unl = []
    for h in hosts():
        if not Path(h["image"]).exists():
            continue
        dst = work / "labels" / f"host_{h['name']}.nii.gz"
        if not dst.exists():
            image, _grid, _lungs, _lesions, allowed = host_setup(h, lungs_cache(work, h))
            save_volume(image.with_array(allowed.astype(np.uint8)), dst)
        unl.append({"image": str(h["image"]), "label": str(dst)})
    paths = {"labelled": work / "fit_crops.json", "realism": work / "quarter_b.json",
             "unlabelled": work / "hosts.json", "profile": work / "profile.json"}
    paths["labelled"].write_text(json.dumps({"label_map": "chest3", "training": relabel(fit_e, "fit")}))
    paths["realism"].write_text(json.dumps({"label_map": "chest3", "training": relabel(b_e, "b")}))
    paths["unlabelled"].write_text(json.dumps({"label_map": "chest3", "training": unl}))
    profile.save(paths["profile"])
    return paths


def train_generator(work: Path, paths: dict, seg_steps: int, gen_steps: int, seed: int) -> tuple[Path, list[str]]:
    """Stage 0 (train-seg on the fit crops) then Stage 1 (train-synth --profile, realism against quarter B)
    through the CLI; returns ``best_realism.pt`` and the commands run."""
    import subprocess

    sets = sum((["--set", o] for o in [*GEN_CONFIG, f"train.seed={seed}"]), [])
    cli = [sys.executable, "-m", "freetumor.cli"]
    seg = [*cli, "train-seg", "--config", "lung-cpu-tiny", "--datalist", str(paths["labelled"]), "--out",
           str(work / "seg"), "--max-steps", str(seg_steps), "--set", "train.val_every=100000", *sets]
    gen = [*cli, "train-synth", "--config", "lung-cpu-tiny", "--datalist", str(paths["labelled"]), "--unlabeled",
           str(paths["unlabelled"]), "--segmentor", str(work / "seg" / "last.pt"), "--out", str(work / "gen"),
           "--max-steps", str(gen_steps), "--profile", str(paths["profile"]), "--realism-real", str(paths["realism"]),
           *sets]
    for cmd in (seg, gen):
        print(" ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=True)
    return work / "gen" / "best_realism.pt", [" ".join(["freetumor", *c[3:]]) for c in (seg, gen)]


def score(real: list[dict], synthetic: list[dict], seed: int) -> dict:
    """The radiomics reader's row; ``_oof`` (out-of-fold probabilities, real first) is for
    :func:`paired_difference` and is not written."""
    from freetumor.evaluation.realism import cross_validate, feature_distance

    strip = lambda fs: [{k: v for k, v in f.items() if not k.startswith("_")} for f in fs]  # noqa: E731
    cv = cross_validate(strip(real), strip(synthetic), folds=5, seed=seed)
    vtt = cv.result
    dist = feature_distance(strip(real), strip(synthetic))
    d = {k: round(v["cohens_d"], 3) for k, v in dist["per_feature"].items()}
    sizes = lambda fs: [f["_diameter_mm"] for f in fs if "_diameter_mm" in f]  # noqa: E731
    return {"n_real": len(real), "n_synthetic": len(synthetic), "auc": round(vtt["auc"], 4),
            "auc_ci95": [round(v, 4) for v in vtt["auc_ci95"]], "cohens_d": d,
            "max_abs_d": round(max((abs(v) for v in d.values()), default=float("nan")), 3),
            "median_diameter_mm": {"real": round(float(np.median(sizes(real))), 2) if sizes(real) else None,
                                   "synthetic": round(float(np.median(sizes(synthetic))), 2)
                                   if sizes(synthetic) else None},
            "top_features": vtt.get("top_features", [])[:5], "_oof": cv.oof,
            "_keys": [f.get("_key") for f in synthetic]}


def paired_difference(base: dict, other: dict, n_real: int, seed: int, n_boot: int = 2000) -> dict | None:
    """AUC(other) - AUC(base) of one reader on one real set, paired: the synthetic lesions of the two rows are
    matched by their draw (``_keys``: host and draw index; only draws present in both rows count), and a
    bootstrap resamples the real lesions and the matched pairs together. ``None`` without matched pairs."""
    from freetumor.evaluation.stats import roc_auc

    ob, oo = np.asarray(base["_oof"]), np.asarray(other["_oof"])
    kb = {k: i for i, k in enumerate(base["_keys"])}
    pairs = [(kb[k], j) for j, k in enumerate(other["_keys"]) if k in kb]
    if len(pairs) < 5:
        return None
    ib, io = (np.array(v) for v in zip(*pairs))
    rb, ro, sb, so = ob[:n_real], oo[:n_real], ob[n_real:][ib], oo[n_real:][io]
    y = np.r_[np.zeros(n_real), np.ones(len(pairs))]
    auc = lambda r, s_: roc_auc(y, np.r_[r, s_])  # noqa: E731
    diff = auc(ro, so) - auc(rb, sb)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 96]))
    boots = []
    for _ in range(n_boot):
        r = rng.integers(0, n_real, n_real)
        p = rng.integers(0, len(pairs), len(pairs))
        boots.append(auc(ro[r], so[p]) - auc(rb[r], sb[p]))
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"pairs": len(pairs), "auc_difference": round(float(diff), 4),
            "auc_difference_ci95": [round(float(lo), 4), round(float(hi), 4)],
            "note": "AUC of the row minus AUC of the base row on the matched draws; negative = the row is harder "
                    "to tell from real; paired bootstrap over real lesions and matched pairs"}


def public(row: dict) -> dict:
    """A row without its private (``_``) keys."""
    return {k: v for k, v in row.items() if not k.startswith("_")}


ALL_ROWS = ("released", "rules_physical", "profile", "generator")
CNN_HOSTS = ("lidc-idri-0001", "lidc-idri-0003")  # the 2.5 mm hosts: the CNN compares at 2.5 mm slices


def group_of(crop) -> str:
    """Patient of a real crop (``LIDC-IDRI-0001_1_2`` -> ``LIDC-IDRI-0001``), host of a synthetic one."""
    return patient_of(crop.case) if crop.source == "real" else crop.case.rsplit("-", 1)[0]


def cnn_rows(real_a: list[dict], real_b: list[dict], pooled: dict, seed: int, window) -> dict:
    """The CNN reader's rows: each synthetic row (LIDC hosts' lesions) against quarter A, and B vs A."""
    from freetumor.evaluation.realism.cnn import cnn_grid, cnn_reader

    crops = lambda fs: [f["_crop"] for f in fs]  # noqa: E731
    a, b = crops(real_a), crops(real_b)
    for c in b:
        c.source = "real"  # quarter B is real: grouped by patient
    keep = {k: [f for f in v if group_of(f["_crop"]) in CNN_HOSTS] for k, v in pooled.items()}
    syn = {k: crops(v) for k, v in keep.items()}
    grid = cnn_grid([a, *[v for v in syn.values() if v]], slice_mm=2.5)
    out = {"grid": grid, "hosts": list(CNN_HOSTS), "rows": {}}
    for k, v in {**syn, "control": b}.items():
        t = time.time()
        r = cnn_reader(a, v, window, folds=5, seed=seed, group_of=group_of, grid=grid)
        r["_oof"], r["_keys"] = r.pop("oof"), [f.get("_key") for f in keep.get(k, [])]
        r["auc"], r["auc_ci95"] = round(r["auc"], 4), [round(x, 4) for x in r["auc_ci95"]]
        r["seconds"] = round(time.time() - t, 1)
        out["rows"][k] = r
        print(f"cnn {k}: AUC {r['auc']:.3f} ({r['auc_ci95'][0]:.3f}-{r['auc_ci95'][1]:.3f}), "
              f"{r['n_real']} vs {r['n_synthetic']}, {r['folds']} folds", flush=True)
    if "profile" in out["rows"] and "generator" in out["rows"]:
        out["paired"] = {"generator_minus_profile": paired_difference(out["rows"]["profile"], out["rows"]["generator"],
                                                                       len(a), seed)}
    out["rows"] = {k: public(v) for k, v in out["rows"].items()}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-host", type=int, default=24, help="synthetic lesions per host and method")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "realism_lung.json")
    ap.add_argument("--rows", default=",".join(ALL_ROWS),
                    help="synthetic rows to run (control always); a subset is merged into an existing --out")
    ap.add_argument("--generator", type=Path, help="a trained generator (train-synth --profile) for the generator row")
    ap.add_argument("--train-generator", type=Path, help="train the generator row's generator in this folder")
    ap.add_argument("--readers", default="radiomics", help="radiomics, cnn or radiomics,cnn (radiomics always runs)")
    ap.add_argument("--real-cache", type=Path, help="pickle of the real side (fit profile, quarters A and B with "
                    "features and crops): written if absent, read if present (a local file of your own runs only)")
    ap.add_argument("--seg-steps", type=int, default=150)
    ap.add_argument("--gen-steps", type=int, default=300)
    args = ap.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    readers = [r for r in args.readers.split(",") if r]
    if not set(readers) <= {"radiomics", "cnn"}:
        print(f"error: --readers: unknown reader(s) {', '.join(sorted(set(readers) - {'radiomics', 'cnn'}))}",
              file=sys.stderr)
        return 2
    vois = DATASETS / "lidc_nodule_vois"
    if not vois.is_dir():
        print(f"real CT not available: {vois}", file=sys.stderr)
        return 2

    from freetumor.lesions.features import extract_crops, lesion_features
    from freetumor.io import case_name, load_volume
    from freetumor.lesions.fit import fit_profile
    from freetumor.lesions.measure import FIT_MARGIN_MM, MIN_VOXELS

    t0 = time.time()
    entries = lidc_voi_entries()
    fit_e, a_e, b_e = split_patients(entries, args.seed)
    window = (-1000.0, 500.0)

    def crops_of(es):
        out = []
        for e in es:
            img, lab = load_volume(e["image"]), load_volume(e["label"])
            out += extract_crops(img, lab, 1, "real", case_name(e["image"]), margin_mm=FIT_MARGIN_MM, min_voxels=MIN_VOXELS)
        return out

    cache = args.real_cache
    if cache is not None and cache.exists():  # the real side of an earlier run of this seed (it does not change)
        import pickle

        stored = pickle.loads(cache.read_bytes())
        if stored["seed"] != args.seed:
            print(f"error: --real-cache {cache} is of seed {stored['seed']}, not {args.seed}", file=sys.stderr)
            return 2
        n_fit, profile, real_a, real_b = stored["n_fit"], stored["profile"], stored["real_a"], stored["real_b"]
        print(f"real side from {cache}", flush=True)
    else:
        fit_crops = crops_of(fit_e)
        n_fit = len(fit_crops)
        print(f"{n_fit} fit crops ({time.time() - t0:.0f} s)", flush=True)
        profile = fit_profile(fit_crops, "lung", {"split": "fit half of the shared LIDC crops", "seed": args.seed})

    def feats_of(crops):
        out = []
        for c in crops:
            f = lesion_features(c, window=window)
            f["_diameter_mm"] = float((6.0 * c.meta["volume_ml"] * 1000.0 / np.pi) ** (1.0 / 3.0))
            c.image = c.mask = None  # the CNN reads the native crop only
            f["_crop"] = c
            out.append(f)
        return out

    if cache is None or not cache.exists():
        real_a, real_b = feats_of(crops_of(a_e)), feats_of(crops_of(b_e))
        if cache is not None:
            import pickle

            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_bytes(pickle.dumps({"seed": args.seed, "n_fit": n_fit, "profile": profile, "real_a": real_a,
                                            "real_b": real_b}))
    gen, gen_commands = None, None
    if "generator" in rows:
        from freetumor.generator import LearnedDifference

        path = args.generator
        if path is None and args.train_generator is not None:
            paths = write_generator_data(args.train_generator, fit_e, b_e, profile)
            path, gen_commands = train_generator(args.train_generator, paths, args.seg_steps, args.gen_steps,
                                                 args.seed)
        if path is None:
            rows.remove("generator")
        else:
            gen = LearnedDifference(path)
    per_host: dict = {}
    pooled = {k: [] for k in ("released", "rules_physical", "profile", "generator") if k in rows}
    for i, h in enumerate(hosts()):
        if not Path(h["image"]).exists():
            continue
        image, grid, lungs, lesions, allowed = host_setup(h, lungs_cache(args.train_generator, h))
        make = {
            "released": lambda: rule_lesions(image, lungs, lesions, args.per_host, args.seed + i, h["name"], window,
                                             "released"),
            "rules_physical": lambda: rule_lesions(image, lungs, lesions, args.per_host, args.seed + i, h["name"],
                                                   window, "physical"),
            "profile": lambda: profile_lesions(image, grid, allowed, lesions, profile, args.per_host, args.seed + i,
                                               h["name"], window),
            "generator": lambda: profile_lesions(image, grid, allowed, lesions, profile, args.per_host,
                                                 args.seed + i, h["name"], window, gen=gen),
        }
        sets = {k: make[k]() for k in pooled}
        per_host[h["name"]] = {"spacing_mm": [round(float(s), 3) for s in image.spacing]}
        for k, fs in sets.items():
            pooled[k] += fs
            per_host[h["name"]][k] = public(score(real_a, fs, args.seed)) if len(fs) >= 5 else None
        print(h["name"] + ": " + ", ".join(f"{k} AUC {v['auc']}" for k, v in per_host[h["name"]].items()
                                           if isinstance(v, dict)), flush=True)
    result = {
        "data": "real CT only: shared LIDC nodule crops split patient-wise (fit half / held-out quarters A, B), "
                "hosts = real chest CT (LIDC whole scans 2.5 mm, pyradiomics 5 mm, NSCLC 3 mm)",
        "command": "python benchmarks/realism_lung.py " + " ".join(sys.argv[1:]),
        "seed": args.seed,
        "lesions": {"fit": n_fit, "held_out_a": len(real_a), "held_out_b": len(real_b)},
        "patients": {"fit": len({patient_of(e['image']) for e in fit_e}),
                     "held_out_a": len({patient_of(e['image']) for e in a_e}),
                     "held_out_b": len({patient_of(e['image']) for e in b_e})},
        "rows": {**{k: score(real_a, v, args.seed) for k, v in pooled.items()},
                 "control": score(real_a, real_b, args.seed)},
        "per_host": per_host,
        "profile_summary": {k: v.get("median") for k, v in profile.summary.items()},
        "seconds": round(time.time() - t0, 1),
    }
    if "profile" in result["rows"] and "generator" in result["rows"]:
        result["paired"] = {"generator_minus_profile": paired_difference(result["rows"]["profile"],
                                                                         result["rows"]["generator"], len(real_a),
                                                                         args.seed)}
    result["rows"] = {k: public(v) for k, v in result["rows"].items()}
    result["features"] = "radiomics reader: the 24 appearance features + 6 shape_* descriptors of `freetumor realism`"
    if "cnn" in readers:
        result["readers"] = {"cnn": cnn_rows(real_a, real_b, pooled, args.seed, window)}
        result["seconds"] = round(time.time() - t0, 1)
    if gen is not None:
        run_dir = Path(gen.path).parent if gen.path else None
        final = json.loads((run_dir / "final.json").read_text()) if run_dir and (run_dir / "final.json").exists() else {}
        if run_dir and not final and (run_dir / "epochs.jsonl").exists():  # a run stopped early: its epoch lines
            eps = [json.loads(ln) for ln in (run_dir / "epochs.jsonl").read_text().splitlines() if ln]
            scored = [e for e in eps if e.get("realism_auc") is not None]
            best = min(scored, key=lambda e: e["realism_auc"]) if scored else None
            final = {"steps": eps[-1]["step"] if eps else None, "stopped_early": True,
                     "best_realism": {k: best[k] for k in ("epoch", "step", "realism_auc")} if best else None}
        if run_dir and (run_dir / "epochs.jsonl").exists():
            final["realism_by_epoch"] = [{"step": e["step"], "realism_auc": e.get("realism_auc"),
                                          "loss_adv": e.get("loss_adv"), "loss_d": e.get("loss_d"),
                                          "probe_recall": e.get("probe_recall")}
                                         for e in (json.loads(ln) for ln in
                                                   (run_dir / "epochs.jsonl").read_text().splitlines() if ln)]
        result["generator"] = {
            "checkpoint": gen.path, "train_commands": gen_commands, "best_realism": final.get("best_realism"),
            "steps": final.get("steps"), "stopped_early": final.get("stopped_early", False),
            "realism_by_epoch": final.get("realism_by_epoch"),
            "data": "labelled: fit-half LIDC crops (nodule = lesion); unlabelled: the 5 hosts' threshold lungs "
                    "(own lesions + 5 mm excluded); realism checkpoint selection: held-out quarter B crops; "
                    "scored against quarter A like every row",
            "config": "lung-cpu-tiny " + " ".join(GEN_CONFIG) + " (synth.d_context: lesion_box, the default)"}
    else:
        result["not_measured"] = {"generator": "no generator given (--generator or --train-generator)"}
    if set(rows) != set(ALL_ROWS) and args.out.exists():  # merge the rows run into the earlier results
        old = json.loads(args.out.read_text())
        for k in rows:
            old["rows"][k] = result["rows"][k]
            for h, v in per_host.items():
                old["per_host"].setdefault(h, {})[k] = v.get(k)
        old["rows"]["control"] = result["rows"]["control"]
        if "generator" in rows:
            old["generator"] = result["generator"]
            old.pop("not_measured", None)
        old.setdefault("row_commands", {}).update({k: result["command"] for k in rows})
        if "readers" in result:
            old["readers"] = result["readers"]
        if "paired" in result:
            old["paired"] = result["paired"]
        old["seconds_" + "+".join(rows)] = result["seconds"]
        result = old
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(portable(json.dumps(result, indent=1)) + "\n")
    for k, r in result["rows"].items():
        print(f"{k:14s} AUC {r['auc']:.3f} ({r['auc_ci95'][0]:.3f}-{r['auc_ci95'][1]:.3f})  max|d| {r['max_abs_d']}  "
              f"median diameter real {r['median_diameter_mm']['real']} synthetic {r['median_diameter_mm']['synthetic']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
