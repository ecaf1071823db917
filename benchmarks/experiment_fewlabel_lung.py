#!/usr/bin/env python
"""Few labels, real lungs: does synthesis help when only K nodules are labelled? Real CT, through the CLI.

A fair comparison (see the documentation's few-label page for the diagnosis of the earlier version):

* **No position prior.** Labelled crops smaller than the training patch are placed at a fresh random
  offset in an air canvas (``data.crop_placement=random``); every model is also scored on **shifted**
  test crops (the same crops at a random offset in a 72 x 72 x 40 mm window of noisy air), and the gap
  between centred and shifted Dice is reported for every arm (the shortcut test).
* **Host data that teach the task.** Healthy host patches are centred in the lung
  (``data.host_patches=organ``); synthesis only draws into host patches that hold no real lesion
  and keeps off padding (FreeTumor's rule, ``synth.online_on=hosts``); the loss's Dice is over the
  batch (``train.dice_batch=true``) in every arm.
* **Equal real-label exposure.** ``stage0`` trains on one labelled sample per step; every host arm on
  the same labelled sample plus one host sample per step (``train.batch_size=2``,
  ``data.labelled_share=0.5``): the labelled patches of each step are the same in every arm, and
  each run logs its labelled share.
* **The strongest cheap baseline.** ``copy_paste`` pastes the same K real labelled nodules into the
  host lung (TumorCP / CarveMix style).

Data (all real, from ``../shared/datasets``; the script stops with one line when it is absent):

* **crops**: the 735 LIDC-IDRI nodule crops (``lidc_nodule_vois``), split **patient-wise** with a
  fixed seed into a training pool, a validation part and a test part (>= 150 crops; the patients of
  ``lidc_full_scans``, LIDC-IDRI-0001 and -0003, are forced into it). The split is stored
  (``benchmarks/results/fewlabel_lung_split.json``) and reused.
* **labels**: for each seed, K crops of the pool (one per patient, K = 10 and 30, the 10 inside the
  30) are the only labelled nodules any arm sees. Validation crops pick each run's ``best.pt`` and
  the step budget (the smallest of 350 / 1000 / 2000 steps whose ``stage0`` validation Dice is within
  0.01 of the best, K = 10, seed 0; stored in ``benchmarks/results/fewlabel_lung/budget.json``).
* **healthy hosts**: slabs of the three real chests that are not LIDC patients (pyradiomics lung1,
  lung2; NSCLC LUNG1-001): the slices more than 15 mm away from the scan's own tumour, with the
  model-free lung mask of ``freetumor organs --engine threshold`` as lung.
* **tests** (never trained or tuned on): the test crops, centred (as stored) and shifted; a
  **composite** set (held-out test nodules pasted into the real lung of the two whole LIDC test
  chests, away from their own nodules, in a 60 x 60 x 40 mm window at a random position: real
  nodules in real context, but a composite; 72 x 72 x 40 mm); and the two whole thin-slice LIDC test chests
  (FROC from probability maps, ``freetumor froc``: sensitivity at 1, 2, 4, 8 false positives per
  scan in the lung and a CPM-style mean, candidates of at least 14 mm^3 = a 3 mm sphere).

Arms (``train-seg``; every number from the CLI's ``predict``, ``evaluate`` and ``froc``):
``stage0`` (the K crops alone), ``none`` (K crops + hosts, no synthesis), ``copy_paste``,
``procedural`` (``--synthesis profile``: a lung profile fitted with ``lesions fit`` on the same K
crops), ``generator`` (a Stage-1 generator trained on the K crops + hosts, the ``stage0`` model as
its frozen segmentor and as the QC judge).

**Resumable across machines.** Each finished run writes its scores to
``benchmarks/results/fewlabel_lung/runs/k<K>_s<seed>_<arm>.json`` (with a signature of the recipe,
the budget and the split; ``--commit`` also commits each file as it is written). A rerun, on any
machine, skips every run whose file is there with the current signature, and the summary
(``--out``) is rebuilt from the files present: a later session continues, it does not restart.

    python benchmarks/experiment_fewlabel_lung.py --quick --out /tmp/fewlabel-quick.json
    nice python benchmarks/experiment_fewlabel_lung.py --out benchmarks/results/fewlabel_lung.json \\
        --work /tmp/fewlabel-work --commit
    python benchmarks/experiment_fewlabel_lung.py --table benchmarks/results/fewlabel_lung.json
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("FREETUMOR_DATASETS", REPO.parent / "shared" / "datasets"))
SPLIT_FILE = REPO / "benchmarks" / "results" / "fewlabel_lung_split.json"
RESULTS = REPO / "benchmarks" / "results" / "fewlabel_lung"
CLI = [str(Path(sys.executable).parent / "freetumor")]
if not Path(CLI[0]).exists():
    CLI = [sys.executable, "-m", "freetumor.cli"]

ARMS = ("stage0", "none", "copy_paste", "procedural", "generator")
BASELINES = ("stage0", "none", "copy_paste")
SYNTH_ARMS = ("procedural", "generator")
SPLIT_SEED = 0
TEST_PATIENTS = ("LIDC-IDRI-0001", "LIDC-IDRI-0003")  # their whole chests are test scans
TEST_FRACTION, VAL_FRACTION = 0.25, 0.08
WHOLE_SCAN_MM = 150.0       # an entry at least this wide in-plane is scored as a whole scan
PADDING_HU = -1500.0        # voxels at or below are scanner padding: set to AIR_HU in a copy
AIR_HU = -1000
AIR_NOISE_HU = 15.0         # shifted / composite windows: air padding with this noise (not flat -1000, which
                            # predict's foreground crop would cut away, re-centring the crop)
HOST_MARGIN_MM = 15.0       # host slabs keep slices this far from the host's own tumour
MIN_SLAB_MM = 40.0
LUNG_REACH_MM = 5.0         # whole scans: false positives "in lung" = within this of the threshold lung mask
WINDOW_MM = (72.0, 72.0, 40.0)  # shifted and composite windows (58 x 58 x 16 voxels of the models' grid); every test
                                # crop must fit (the largest LIDC test crop is 66 x 32 x 31 mm)
N_COMPOSITE = 60            # composite test nodules (every n-th test crop)
COMPOSITE_AWAY_MM = 20.0    # composite nodules keep this far from the host chest's own nodules
MIN_CANDIDATE_MM3 = 14.0    # FROC candidates: at least a 3 mm sphere (LIDC's smallest nodules)
FP_RATES = (1, 2, 4, 8)
NODULES_MAP = {"name": "lidc-nodules", "organs": {"lung": {"tumor": 1}}, "labels": [0, 1]}
BINS = (("<10 mm", 0.0, 10.0), ("10-20 mm", 10.0, 20.0), (">=20 mm", 20.0, math.inf))
CROP_SETS = ("centred", "shifted", "composite")

# Geometry of every model: 1.25 x 1.25 x 2.5 mm, 32 x 32 x 8 patches (40 x 40 x 20 mm); sliding windows
# without overlap. Every arm: labelled crops at random offsets, host patches in the lung, batch Dice.
GEOMETRY = ["data.spacing=[1.25,1.25,2.5]", "data.roi_size=[32,32,8]", "data.num_samples=4", "data.cache=true",
            "val.overlap=0", "val.sw_batch_size=32", "data.crop_placement=random", "data.host_patches=organ",
            "train.dice_batch=true", "train.lr=3e-3", "train.warmup_steps=20"]
STAGE0_RECIPE = ["train.batch_size=1"]
HOST_RECIPE = ["train.batch_size=2", "data.labelled_share=0.5", "synth.online_on=hosts", "synth.online_prob=0.5"]
SYNTH_RECIPE = ["data.num_samples=2", "synth.probe_samples=4", "synth.epoch_steps=50", "train.batch_size=1"]
PLACEMENTS = ("random", "host")  # --placement: labelled crops at random offsets in air, or pasted into host lung
JUDGES = ("stage0", "none")      # --judge: the generator arm's frozen segmentor (Stage 1) and QC judge
BUDGETS = (350, 1000, 2000)
RENDER_WORKERS = 2
PLATEAU = 0.01

FULL = {"k": [10, 30], "seeds": 3, "steps": None, "synth_steps": 100}
QUICK = {"k": [10], "seeds": 1, "steps": 150, "synth_steps": 30}
QUICK_EVERY = 3             # --quick: every 3rd test crop (61), a third of the composite nodules, no whole scans

TARGETS = {"shortcut_gap": 0.03, "none_vs_stage0": -0.01, "fp_in_lung": 65.0, "gain": 0.03, "goal": 0.05}


class Failure(Exception):
    """A one-line error: the file and the problem."""


# ----------------------------------------------------------------------------- running the CLI
def sh(args: list, log: list, quiet: bool = True) -> str:
    """Run ``freetumor ARGS``; logs the command, its wall time and its CPU time (user + system)."""
    cmd = [*CLI, *map(str, args)]
    t, c = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, COLUMNS="200"))
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    log.append({"cmd": "freetumor " + " ".join(map(str, args)), "rc": r.returncode,
                "seconds": round(time.perf_counter() - t, 1),
                "cpu_seconds": round(c1.ru_utime - c.ru_utime + c1.ru_stime - c.ru_stime, 1)})
    if not quiet:
        print(f"[{log[-1]['seconds']:6.1f} s] {log[-1]['cmd'][:160]}", file=sys.stderr, flush=True)
    if r.returncode != 0:
        sys.stderr.write(r.stderr[-3000:])
        raise Failure(f"freetumor {args[0]}: failed (exit {r.returncode}): {' '.join(map(str, args))[:300]}")
    return r.stdout


def sets(opts: list[str]) -> list[str]:
    return [x for o in opts for x in ("--set", o)]


# ----------------------------------------------------------------------------- crops and the split
def patient_of(name: str) -> str:
    return name.split("_")[0]


def crop_entries(vois: Path) -> list[dict]:
    """One entry per LIDC crop: image, label (1 = nodule), case name, patient."""
    images = sorted((vois / "images").glob("*.nii.gz"))
    if not images:
        raise Failure(f"{vois}: no crops in images/")
    out = []
    for p in images:
        lab = vois / "labels" / p.name
        if not lab.exists():
            raise Failure(f"{lab}: label of {p.name} not found")
        case = p.name[: -len(".nii.gz")]
        out.append({"image": str(p), "label": str(lab), "case": case, "patient": patient_of(case)})
    return out


def make_split(cases: list[str], seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION,
               val_fraction: float = VAL_FRACTION, forced_test=TEST_PATIENTS) -> dict:
    """Patient-wise split of crop case names into ``pool``, ``val`` and ``test`` (deterministic in
    ``cases`` and ``seed``): patients in a seeded order, the forced ones first into test, test filled to
    ``test_fraction`` of the crops, then validation to ``val_fraction``, the rest the training pool."""
    by_patient: dict[str, list[str]] = {}
    for c in sorted(cases):
        by_patient.setdefault(patient_of(c), []).append(c)
    patients = sorted(by_patient)
    order = [patients[i] for i in np.random.default_rng(seed).permutation(len(patients))]
    order = [p for p in forced_test if p in by_patient] + [p for p in order if p not in forced_test]
    parts = {"test": [], "val": [], "pool": []}
    targets = (("test", test_fraction * len(cases)), ("val", val_fraction * len(cases)))
    k = 0
    for part, target in targets:
        while k < len(order) and len(parts[part]) < target:
            parts[part] += by_patient[order[k]]
            k += 1
    for p in order[k:]:
        parts["pool"] += by_patient[p]
    out = {"seed": seed, "fractions": {"test": test_fraction, "val": val_fraction}, "forced_test": list(forced_test)}
    for part in ("pool", "val", "test"):
        names = sorted(parts[part])
        out[part] = {"crops": names, "patients": sorted({patient_of(c) for c in names})}
    return out


def load_split(path: Path, cases: list[str], seed: int, store: bool = True) -> dict:
    """The stored split when it covers exactly ``cases``; else a new one, stored at ``path`` (with ``store``)."""
    if path.exists():
        try:
            split = json.loads(path.read_text())
            stored = sorted(c for part in ("pool", "val", "test") for c in split[part]["crops"])
        except (OSError, ValueError, KeyError, TypeError):
            raise Failure(f"{path}: not a split file of this experiment (delete it or pass --split NEW.json)")
        if stored != sorted(cases):
            raise Failure(f"{path}: the stored split lists {len(stored)} crops, the data has {len(cases)} others "
                          f"(delete it or pass --split NEW.json)")
        return split
    split = make_split(cases, seed)
    if not store:
        return split
    split["note"] = ("patient-wise split of the lidc_nodule_vois crops for benchmarks/experiment_fewlabel_lung.py; "
                     "made once with make_split and reused")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(split, indent=1) + "\n")
    tmp.replace(path)
    return split


def labelled_crops(pool: list[str], k: int, seed: int) -> list[str]:
    """K pool crops from K different patients, drawn by ``seed`` (the first 10 of K = 30 are those of K = 10)."""
    by_patient: dict[str, list[str]] = {}
    for c in sorted(pool):
        by_patient.setdefault(patient_of(c), []).append(c)
    patients = sorted(by_patient)
    rng = np.random.default_rng([SPLIT_SEED, 1000 + seed])
    order = [patients[i] for i in rng.permutation(len(patients))]
    if k > len(order):
        raise Failure(f"K = {k} needs {k} pool patients, the pool has {len(order)}")
    return [by_patient[p][int(rng.integers(len(by_patient[p])))] for p in order[:k]]


# ----------------------------------------------------------------------------- labels, hosts, test sets
def fill_slices(mask: np.ndarray, axis: int) -> np.ndarray:
    from scipy import ndimage

    moved = np.moveaxis(mask, axis, 0)
    return np.moveaxis(np.stack([ndimage.binary_fill_holes(s) for s in moved]), 0, axis)


def ball(radius_mm: float, spacing) -> np.ndarray:
    reach = [max(1, int(np.ceil(radius_mm / s))) for s in spacing]
    g = np.ogrid[tuple(slice(-r, r + 1) for r in reach)]
    return sum((x * s / radius_mm) ** 2 for x, s in zip(g, spacing)) <= 1.0


def write_crop_chest3(entry: dict, dst: Path) -> None:
    """A crop's label in the chest3 convention: 2 nodule, 1 lung parenchyma (air below -320 HU with its
    vessels filled in slice by slice, minus 2 mm around the nodule), 0 else."""
    from scipy import ndimage

    from freetumor.io import load_volume, save_volume

    if dst.exists():
        return
    img, lab = load_volume(entry["image"]), load_volume(entry["label"])
    nodule = np.asarray(lab.array) > 0
    axis = img.axis_of("S")
    lung = fill_slices(np.asarray(img.array) < -320, axis)
    near = ndimage.binary_dilation(nodule, structure=ball(2.0, img.spacing))
    out = np.where(lung & ~near, 1, 0).astype(np.uint8)
    out[nodule] = 2
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_volume(lab.with_array(out), dst)


HOSTS = {
    "pyradiomics_lung1": ("pyradiomics_lung/lung1_image.nii.gz", "pyradiomics_lung/lung1_label.nii.gz"),
    "pyradiomics_lung2": ("pyradiomics_lung/lung2_image.nii.gz", "pyradiomics_lung/lung2_label.nii.gz"),
    "nsclc_lung1_001": ("nsclc_radiomics_lung1_001/image.nii.gz", "nsclc_radiomics_lung1_001/label.nii.gz"),
}


def host_slabs(name: str, work: Path, log: list) -> list[dict]:
    """Tumour-free slabs of one host chest: slices farther than HOST_MARGIN_MM from its tumour (label 1),
    at least MIN_SLAB_MM thick, image copied as is, label chest3 (1 = threshold lung of the whole chest)."""
    from freetumor.io import Volume, load_volume, save_volume

    img_rel, lab_rel = HOSTS[name]
    folder = work / "hosts"
    done = folder / f"{name}.json"
    if done.exists():
        return json.loads(done.read_text())
    lungs = work / "hosts" / "lungs" / name
    if not (lungs / "datalist.json").exists():
        sh(["organs", "--engine", "threshold", "--image", DATASETS / img_rel, "--out", lungs], log)
    image = load_volume(DATASETS / img_rel)
    lung = np.asarray(load_volume(next(p for p in lungs.glob("*.nii.gz"))).array) > 0
    tumour = np.asarray(load_volume(DATASETS / lab_rel).array) == 1
    axis = image.axis_of("S")
    dz = image.spacing[axis]
    zs = np.nonzero(np.moveaxis(tumour, axis, 0).reshape(tumour.shape[axis], -1).any(1))[0]
    keep = np.ones(image.shape[axis], bool)
    if zs.size:
        m = int(np.ceil(HOST_MARGIN_MM / dz))
        keep[max(0, zs.min() - m): zs.max() + m + 1] = False
    runs, start = [], None
    for z in range(len(keep) + 1):
        if z < len(keep) and keep[z]:
            start = z if start is None else start
        elif start is not None:
            runs.append((start, z))
            start = None
    slabs = []
    for i, (z0, z1) in enumerate(r for r in runs if (r[1] - r[0]) * dz >= MIN_SLAB_MM):
        index = [slice(None)] * 3
        index[axis] = slice(z0, z1)
        shift = np.eye(4)
        shift[axis, 3] = z0
        affine = image.affine @ shift
        sub_lung = lung[tuple(index)]
        if sub_lung.sum() * float(np.prod(image.spacing)) / 1000.0 < 20.0:  # under 20 mL of lung: skip
            continue
        ip, lp = folder / f"{name}_slab{i}_image.nii.gz", folder / f"{name}_slab{i}_label.nii.gz"
        save_volume(Volume(np.ascontiguousarray(image.array[tuple(index)]), affine), ip)
        save_volume(Volume(sub_lung.astype(np.uint8), affine), lp)
        slabs.append({"image": str(ip), "label": str(lp), "host": name, "slices": [int(z0), int(z1)],
                      "lung_ml": round(float(sub_lung.sum() * np.prod(image.spacing) / 1000.0), 1)})
    done.write_text(json.dumps(slabs, indent=1))
    return slabs


def write_datalist(path: Path, entries: list[dict], label_map: str, keep=("image", "label", "fold")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{k: e[k] for k in keep if k in e} for e in entries]
    path.write_text(json.dumps({"label_map": label_map, "training": rows}, indent=1) + "\n")
    return path


def evaluation_map(spec: str, dst: Path) -> str:
    """``evaluate`` needs the organ's ids: a tumour-only map (nodule crops) gets an id no label uses."""
    from freetumor.labels import get_label_map

    lm = get_label_map(spec, "lung")
    if lm.has_organ_ids("lung"):
        return spec
    unused = next(i for i in range(250, 65536) if i not in lm.known)
    dst.write_text(json.dumps({"name": f"{lm.name}+unused-organ-id", "organs": {"lung": {
        "organ": [unused], "tumor": lm.tumour_id("lung")}}, "labels": sorted(set(lm.known) | {unused})}))
    return str(dst)


def in_plane_mm(vol) -> float:
    axis = vol.axis_of("S")
    return min(n * s for a, (n, s) in enumerate(zip(vol.shape, vol.spacing)) if a != axis)


def check_test_datalist(datalist: Path, default_map: Path | None = None) -> tuple[list[dict], str]:
    """The labelled entries of a test datalist and its label map (its own, relative to it, else the LIDC
    crops' convention: 1 = nodule); a :class:`Failure` naming the file otherwise."""
    from freetumor.data import datalist_label_map, load_datalist
    from freetumor.errors import ConfigError, FreeTumorError
    from freetumor.labels import get_label_map

    try:
        entries = [e for e in load_datalist(datalist) if e.get("label")]
        if not entries:
            raise Failure(f"{datalist}: no entries with a \"label\"")
        lm_spec = datalist_label_map(datalist) or (None if default_map is None else str(default_map))
        if lm_spec is not None:
            get_label_map(lm_spec, "lung").tumour_id("lung")
    except ConfigError as exc:  # e.g. a label map without lung: name the datalist
        raise Failure(f"{datalist}: {exc}") from None
    except FreeTumorError as exc:  # already names its file
        raise Failure(str(exc)) from None
    for e in entries:
        for k in ("image", "label"):
            if not Path(e[k]).exists():
                raise Failure(f"{e[k]}: listed in {datalist} but not found")
    from freetumor.io import load_volume

    tumour = get_label_map(lm_spec, "lung").tumour_id("lung") if lm_spec else 1
    try:
        if not any((np.asarray(load_volume(e["label"]).array) == tumour).any() for e in entries):
            raise Failure(f"{datalist}: no lesion (label {tumour}) in any of its {len(entries)} labels")
    except FreeTumorError as exc:
        raise Failure(str(exc)) from None
    check_crops_fit(entries, str(datalist))
    return entries, lm_spec


def prepare_test_set(name: str, datalist: Path, work: Path, log: list, default_map: Path) -> dict:
    """A test set ready for ``predict`` / ``evaluate``: every crop under a unique name in
    ``work/tests/NAME/images/all`` and every whole scan in ``.../images/scans`` (a link, or a copy with the
    padding set to air), the crops' and the whole scans' datalists (original labels), and the whole scans'
    threshold lungs."""
    from freetumor.errors import FreeTumorError
    from freetumor.io import case_name, load_volume, save_volume

    root = work / "tests" / name
    ready = root / "set.json"
    if ready.exists():
        return json.loads(ready.read_text())
    entries, lm_spec = check_test_datalist(datalist, default_map)
    images = root / "images"
    (images / "all").mkdir(parents=True, exist_ok=True)
    (images / "scans").mkdir(parents=True, exist_ok=True)
    crops, scans = [], []
    used: set[str] = set()
    for i, e in enumerate(entries):
        try:
            vol = load_volume(e["image"])
        except FreeTumorError as exc:
            raise Failure(str(exc)) from None
        case = case_name(e["image"])
        unique = case if case not in used and name == "lidc_crops" else f"{i:04d}_{e.get('patient') or case}"
        while unique in used:
            unique += "_"
        used.add(unique)
        whole = bool(e["whole_scan"]) if "whole_scan" in e else in_plane_mm(vol) >= WHOLE_SCAN_MM
        dst = images / ("scans" if whole else "all") / f"{unique}.nii.gz"
        padded = np.asarray(vol.array) <= PADDING_HU
        if padded.any():  # never modify the input: a copy with the scanner's padding set to air
            src = images / ("scans_padded" if whole else "crops") / f"{unique}.nii.gz"
            src.parent.mkdir(parents=True, exist_ok=True)
            arr = np.array(vol.array, copy=True)
            arr[padded] = AIR_HU
            save_volume(vol.with_array(arr), src)
        else:
            src = Path(e["image"]).resolve()
        if not dst.exists() and not dst.is_symlink():
            dst.symlink_to(src.resolve())
        row = {"image": str(dst), "label": str(Path(e["label"]).resolve()), "source": e["image"]}
        (scans if whole else crops).append(row)
    out = {"name": name, "datalist": str(datalist), "label_map": lm_spec,
           "eval_label_map": evaluation_map(lm_spec, root / "eval_label_map.json"), "images": str(images / "all"),
           "scan_images": str(images / "scans"),
           "crops": None, "scans": None, "n_crops": len(crops), "n_scans": len(scans)}
    if crops:
        out["crops"] = str(write_datalist(root / "crops.json", crops, lm_spec))
    if scans:
        out["scans"] = str(write_datalist(root / "scans.json", scans, lm_spec))
        lungs = root / "lungs"
        try:
            if not (lungs / "datalist.json").exists():
                sh(["organs", "--engine", "threshold", "--image", images / "scans", "--out", lungs], log)
            out["lungs"] = str(lungs)
        except Failure as exc:  # no model-free lung mask (e.g. no air in the body): no "in lung" figures
            out["lungs"], out["lungs_error"] = None, str(exc)
    ready.write_text(json.dumps(out, indent=1))
    return out


# ----------------------------------------------------------------------------- shifted and composite test sets
def window_voxels(spacing) -> tuple[int, ...]:
    return tuple(int(math.ceil(w / s)) for w, s in zip(WINDOW_MM, spacing))


def noisy_air(shape, rng: np.random.Generator) -> np.ndarray:
    return np.rint(AIR_HU + np.abs(rng.normal(0.0, AIR_NOISE_HU, shape))).astype(np.int16)


def shifted_crops(entries: list[dict], dst: Path, nodules_map: Path) -> Path:
    """The test crops at a random offset (seeded by the crop's name) in a window of ``WINDOW_MM`` filled with
    noisy air; label likewise. Datalist written to ``dst``. (:func:`check_crops_fit` refused larger crops.)"""
    from freetumor.io import load_volume, save_volume

    folder = dst.parent / "shifted"
    rows = []
    for e in entries:
        img_p, lab_p = folder / "images" / f"{e['case']}.nii.gz", folder / "labels" / f"{e['case']}.nii.gz"
        if not lab_p.exists():
            img, lab = load_volume(e["image"]), load_volume(e["label"])
            rng = np.random.default_rng(int(hashlib.sha256(e["case"].encode()).hexdigest()[:8], 16))
            size = [max(w, n) for w, n in zip(window_voxels(img.spacing), img.shape)]
            off = [int(rng.integers(0, c - n + 1)) for c, n in zip(size, img.shape)]
            region = tuple(slice(o, o + n) for o, n in zip(off, img.shape))
            arr = noisy_air(size, rng)
            src = np.asarray(img.array)
            arr[region] = np.where(src <= PADDING_HU, AIR_HU, src)
            out_lab = np.zeros(size, np.asarray(lab.array).dtype)
            out_lab[region] = np.asarray(lab.array)
            shift = np.eye(4)
            shift[:3, 3] = -np.asarray(off, float)
            affine = img.affine @ shift
            from freetumor.io import Volume

            img_p.parent.mkdir(parents=True, exist_ok=True)
            lab_p.parent.mkdir(parents=True, exist_ok=True)
            save_volume(Volume(arr, affine), img_p)
            save_volume(Volume(out_lab, affine), lab_p)
        rows.append({"image": str(img_p), "label": str(lab_p)})
    return write_datalist(dst, rows, str(nodules_map))


def check_crops_fit(entries: list[dict], source: str) -> None:
    """A :class:`Failure` naming the first crop (an entry narrower than a whole scan) larger than ``WINDOW_MM``
    along some axis: it could not be shifted inside the window."""
    from freetumor.errors import FreeTumorError
    from freetumor.io import load_volume

    for e in entries:
        if e.get("whole_scan"):
            continue
        try:
            vol = load_volume(e["image"])
        except FreeTumorError as exc:
            raise Failure(str(exc)) from None
        if in_plane_mm(vol) >= WHOLE_SCAN_MM:
            continue
        mm = [n * sp for n, sp in zip(vol.shape, vol.spacing)]
        if any(m > w + sp + 1e-6 for m, w, sp in zip(mm, WINDOW_MM, vol.spacing)):  # the window, to a voxel
            raise Failure(f"{e['image']}: crop of {' x '.join(f'{m:.0f}' for m in mm)} mm (in {source}) is larger than "
                          f"the {' x '.join(f'{w:.0f}' for w in WINDOW_MM)} mm test window")


def composite_crops(entries: list[dict], scans: list[tuple[str, Path, Path]], dst: Path, nodules_map: Path,
                    n: int = N_COMPOSITE) -> Path:
    """Held-out test nodules pasted into real healthy lung: every n-th test crop, resampled to a whole
    test chest's grid, pasted (1-voxel feather, :func:`freetumor.copy_paste.paste_lesion`) into its
    threshold lung at least ``COMPOSITE_AWAY_MM`` from the chest's own nodules, in a ``WINDOW_MM`` window
    at a random position. A composite: real nodules in real context, not real cases."""
    from scipy import ndimage

    from freetumor.copy_paste import LesionBank, paste_lesion
    from freetumor.io import Volume, load_volume, save_volume
    from freetumor.lung_threshold import threshold_lung_mask

    folder = dst.parent / "composite"
    picked = entries[:: max(1, len(entries) // n)][:n]  # every 3rd of the 184 test crops
    done = folder / "done.json"
    if done.exists():
        rows = json.loads(done.read_text())
        return write_datalist(dst, rows, str(nodules_map))
    hosts = []
    for name, img_p, lab_p in scans:
        img = load_volume(img_p)
        hu = np.asarray(img.array).astype(np.float32)
        hu[hu <= PADDING_HU] = AIR_HU
        lung = threshold_lung_mask(img.with_array(hu.astype(np.int16)))
        own = np.asarray(load_volume(lab_p).array) > 0
        away = np.ones(own.shape, bool)
        if own.any():  # the distance only near the nodules (exact: every nodule voxel is inside the box)
            idx = np.argwhere(own)
            reach = [int(np.ceil(COMPOSITE_AWAY_MM / sp)) + 1 for sp in img.spacing]
            box = tuple(slice(max(0, lo - r), min(n, hi + r + 1))
                        for lo, hi, r, n in zip(idx.min(0), idx.max(0), reach, own.shape))
            away[box] = ndimage.distance_transform_edt(~own[box], sampling=img.spacing) > COMPOSITE_AWAY_MM
        allowed = ndimage.binary_erosion(lung, iterations=2) & away
        hosts.append((name, img, hu, allowed))
    rows = []
    for i, e in enumerate(picked):
        rng = np.random.default_rng([SPLIT_SEED, 77, i])
        name, host, hu, allowed = hosts[i % len(hosts)]
        crop, clab = load_volume(e["image"]), load_volume(e["label"])
        zoom = [a / b for a, b in zip(crop.spacing, host.spacing)]
        c_hu = ndimage.zoom(np.where(np.asarray(crop.array) <= PADDING_HU, AIR_HU,
                                     np.asarray(crop.array)).astype(np.float32), zoom, order=1)
        c_lab = ndimage.zoom((np.asarray(clab.array) > 0).astype(np.float32), zoom, order=1) > 0.5
        bank = LesionBank.from_arrays([(c_hu, c_lab.astype(np.uint8))], 1, margin_vox=2, min_voxels=1)
        if not len(bank):
            continue
        size = window_voxels(host.spacing)
        cands = np.argwhere(allowed)
        placed = None
        for _try in range(20):
            c = cands[int(rng.integers(len(cands)))]
            lo = [int(np.clip(ci - int(rng.integers(4, max(5, s - 4))), 0, n - s)) for ci, s, n in zip(c, size, hu.shape)]
            box = tuple(slice(a, a + s) for a, s in zip(lo, size))
            r = paste_lesion(hu[box], np.zeros(size, np.uint8), allowed[box], bank, rng, 1, feather_vox=1.0)
            if r is not None:
                placed = (lo, r)
                break
        if placed is None:
            continue
        lo, (w_hu, w_lab, _info) = placed
        shift = np.eye(4)
        shift[:3, 3] = lo
        affine = host.affine @ shift
        case = f"{e['case']}_in_{name}"
        img_p, lab_p = folder / "images" / f"{case}.nii.gz", folder / "labels" / f"{case}.nii.gz"
        img_p.parent.mkdir(parents=True, exist_ok=True)
        lab_p.parent.mkdir(parents=True, exist_ok=True)
        save_volume(Volume(np.rint(w_hu).astype(np.int16), affine), img_p)
        save_volume(Volume((w_lab == 1).astype(np.uint8), affine), lab_p)
        rows.append({"image": str(img_p), "label": str(lab_p)})
    if not rows:
        raise Failure(f"{folder}: no composite nodule could be placed")
    done.write_text(json.dumps(rows, indent=1))
    return write_datalist(dst, rows, str(nodules_map))


# ----------------------------------------------------------------------------- the protocol
def geometry(placement: str) -> list[str]:
    """GEOMETRY with the labelled crops' placement (``random``: the default, or ``host``)."""
    return [f"data.crop_placement={placement}" if g.startswith("data.crop_placement=") else g for g in GEOMETRY]


def stage0_recipe(placement: str) -> list[str]:
    """stage0 with host placement reads labelled samples only (share 1): the hosts are only their context."""
    return STAGE0_RECIPE + (["data.labelled_share=1.0"] if placement == "host" else [])


def run_tag(arm: str, placement: str, judge: str) -> str:
    """Suffix of an arm's run folders and result files; empty for the default protocol (random, stage0)."""
    tag = f"-j{judge}" if arm in ("generator", "stage1") and judge != "stage0" else ""
    return tag + (f"-{placement}" if placement != "random" else "")


# ----------------------------------------------------------------------------- training
def train_seg(run: Path, datalist: Path, recipe: list[str], seed: int, extra: list, steps: int, log: list,
              placement: str = "random") -> Path:
    if not (run / "final.json").exists():
        resume = ["--resume"] if (run / "last.pt").exists() else []
        every = max(1, steps // 5)
        sh(["train-seg", "--config", "lung-cpu-tiny", "--datalist", datalist, "--out", run, "--max-steps", steps,
            *sets([*geometry(placement), *recipe, f"train.seed={seed}", f"train.val_every={every}",
                   f"train.checkpoint_every={every}"]), *extra, *resume], log, quiet=False)
    return run / "best.pt"


def train_synth(run: Path, labelled: Path, hosts: Path, segmentor: Path, seed: int, steps: int, log: list,
                placement: str = "random") -> Path:
    if not (run / "final.json").exists():
        resume = ["--resume"] if (run / "last.pt").exists() else []
        sh(["train-synth", "--config", "lung-cpu-tiny", "--datalist", labelled, "--unlabeled", hosts,
            "--segmentor", segmentor, "--out", run, "--max-steps", steps,
            *sets([*geometry(placement), *SYNTH_RECIPE, f"train.seed={seed}"]), *resume], log, quiet=False)
    return run / "generator.pt"


def best_val(run: Path) -> float | None:
    p = run / "val.jsonl"
    scores = [json.loads(x).get("score") for x in p.read_text().splitlines()] if p.exists() else []
    scores = [s for s in scores if s is not None]
    return max(scores) if scores else None


def train_stage0(d: Path, data: dict, hosts_dl: Path, seed: int, steps: int, log: list, placement: str) -> Path:
    context = ["--unlabeled", hosts_dl] if placement == "host" else []
    return train_seg(d / f"stage0{run_tag('stage0', placement, 'stage0')}_n{steps}", data["trainval"],
                     stage0_recipe(placement), seed, context, steps, log, placement)


def arm_model(arm: str, d: Path, data: dict, hosts_dl: Path, seed: int, steps: int, synth_steps: int,
              log: list, placement: str = "random", judge: str = "stage0") -> Path:
    """Train (or reuse) one arm of one (K, seed); the generator arm trains its Stage 1 first, with the
    ``judge`` arm's model (``stage0`` or ``none``, trained first) as frozen segmentor and QC judge."""
    stage0 = train_stage0(d, data, hosts_dl, seed, steps, log, placement)
    if arm == "stage0":
        return stage0
    extra = ["--unlabeled", hosts_dl]
    if arm == "generator" and judge == "none":
        stage0 = arm_model("none", d, data, hosts_dl, seed, steps, synth_steps, log, placement)
    if arm == "copy_paste":
        extra += ["--synthesis", "copy_paste"]
    elif arm == "procedural":
        # rendering lesions costs more than the step: two data-loader workers render in parallel (the
        # patches are those of the main process: step-indexed data), so the worker count is not in the signature
        extra += ["--synthesis", "profile", "--profile", data["profile"], "--set", f"data.num_workers={RENDER_WORKERS}"]
    elif arm == "generator":
        gen = train_synth(d / f"stage1{run_tag('stage1', placement, judge)}_n{synth_steps}", data["labelled"],
                          hosts_dl, stage0, seed, synth_steps, log, placement)
        extra += ["--synthesis", "generator", "--generator", gen, "--qc-segmentor", stage0]
    return train_seg(d / f"{arm}{run_tag(arm, placement, judge)}_n{steps}", data["trainval"], HOST_RECIPE, seed,
                     extra, steps, log, placement)


def run_facts(run_dir: Path) -> dict:
    """What a run saw: its labelled share, synthesis outcomes per patch and acceptance, best validation."""
    final = json.loads((run_dir / "final.json").read_text()) if (run_dir / "final.json").exists() else {}
    tally: dict = {}
    failed: dict = {}  # checks failed by rejected tries (logged from the lesions/ release on)
    tries = 0
    p = run_dir / "metrics.jsonl"
    if p.exists():
        for ln in p.read_text().splitlines():
            row = json.loads(ln)
            for k, v in (row.get("synth") or {}).items():
                tally[k] = tally.get(k, 0) + v
            tries += int(row.get("synth_tries") or 0)
            for k, v in (row.get("synth_rejects") or {}).items():
                failed[k] = failed.get(k, 0) + v
    drawn = tally.get("accepted", 0) + tally.get("rejected", 0)
    return {"labelled_share": final.get("labelled_share"), "steps": final.get("steps"),
            "best_val": best_val(run_dir), "synth_status": tally, "synth_tries": tries,
            **({"failed_checks": failed} if failed else {}),
            "accepted_per_try": round(tally.get("accepted", 0) / tries, 4) if tries else None,
            "accepted_per_patch_drawn": round(tally.get("accepted", 0) / drawn, 4) if drawn else None}


def choose_budget(data: dict, seed: int, work: Path, log: list, stored: Path | None, signature: str,
                  hosts_dl: Path, placement: str = "random") -> dict:
    """The step budget: the smallest of BUDGETS whose stage0 best validation Dice (K = 10, seed 0) is within
    PLATEAU of the best of them. Stored (``stored``) and reused while the signature matches."""
    if stored is not None and stored.exists():
        b = json.loads(stored.read_text())
        if b.get("signature") == signature:
            return b
    d = work / "runs" / "k10" / f"s{seed}"
    vals = {}
    for n in BUDGETS:
        vals[n] = best_val(train_stage0(d, data, hosts_dl, seed, n, log, placement).parent)
    top = max(v for v in vals.values() if v is not None)
    steps = next(n for n in BUDGETS if vals[n] is not None and vals[n] >= top - PLATEAU)
    out = {"signature": signature, "steps": steps, "validation_dice": {str(n): v for n, v in vals.items()},
           "rule": f"smallest budget whose stage0 best validation tumour Dice is within {PLATEAU} of the best "
                   f"(K = 10, seed {seed}, validation crops only)"}
    if stored is not None:
        write_json(stored, out)
    return out


# ----------------------------------------------------------------------------- scoring
def lesion_background(pred: Path, crops_dl: Path, tumour_id: int) -> dict[str, float | None]:
    """Per crop: the share of true nodule voxels that the model calls background (class 0, not lung)."""
    from freetumor.data import load_datalist
    from freetumor.io import case_name, load_volume

    out = {}
    for e in load_datalist(crops_dl):
        case = case_name(e["image"])
        gt = np.asarray(load_volume(e["label"]).array) == tumour_id
        p = np.asarray(load_volume(pred / f"{case}.nii.gz").array)
        out[case] = round(float((p[gt] == 0).mean()), 4) if gt.any() else None
    return out


def score_crops(model: Path, test: dict, work: Path, run_id: str, log: list) -> dict:
    pred = work / "pred" / test["name"] / run_id
    if not pred.exists():
        sh(["predict", "--model", model, "--image", test["images"], "--out", pred, "--device", "cpu"], log)
    rep = work / "eval" / test["name"] / run_id / "crops"
    if not (rep / "summary.json").exists():
        sh(["evaluate", "--pred", pred, "--gt", test["crops"], "--organ", "lung", "--out", rep,
            "--label-map", test["eval_label_map"], "--pred-label-map", "organ3"], log)
    res = read_report(rep)
    from freetumor.labels import get_label_map

    bg = lesion_background(pred, Path(test["crops"]), get_label_map(test["label_map"], "lung").tumour_id("lung"))
    for case, row in res["cases"].items():
        row["lesion_called_background"] = bg.get(case)
    return res


def pooled_set(crop_sets: dict[str, dict], work: Path) -> dict:
    """The crop test sets as one set (one ``predict`` and one ``evaluate`` per model): every image linked
    as ``<set>__<case>``, one datalist; :func:`split_sets` splits the scores back."""
    from freetumor.data import load_datalist
    from freetumor.io import case_name

    root = work / "tests" / "pooled_crops"
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, t in crop_sets.items():
        for e in load_datalist(t["crops"]):
            link = images / f"{name}__{case_name(e['image'])}.nii.gz"
            if not link.is_symlink():
                link.symlink_to(Path(e["image"]).resolve())
            rows.append({"image": str(link), "label": e["label"]})
    first = next(iter(crop_sets.values()))
    return {**first, "name": "pooled_crops", "images": str(images), "n_crops": len(rows),
            "crops": str(write_datalist(root / "crops.json", rows, first["label_map"]))}


def split_sets(scores: dict, crop_sets: dict) -> dict:
    """Scores of the pooled set -> per crop test set, cases under their own names."""
    out = {name: {"cases": {}, "lesions": []} for name in crop_sets}
    for case, row in scores["cases"].items():
        name, _, own = case.partition("__")
        out[name]["cases"][own] = row
    for les in scores["lesions"]:
        name, _, own = les["case"].partition("__")
        out[name]["lesions"].append({**les, "case": own})
    return out


def score_scans(model: Path, test: dict, work: Path, run_id: str, log: list) -> dict:
    """Whole scans: probability maps, then ``freetumor froc`` in the lung (within LUNG_REACH_MM of the
    threshold lung mask) and over the whole scan."""
    from freetumor.data import load_datalist
    from freetumor.io import case_name, load_volume

    pred = work / "pred" / test["name"] / f"{run_id}_scans"
    if not pred.exists():
        sh(["predict", "--model", model, "--image", test["scan_images"], "--out", pred, "--device", "cpu",
            "--probabilities"], log)
    out = {}
    region = None
    if test.get("lungs"):
        for e in load_datalist(test["scans"]):
            case = case_name(e["image"])
            near_lung(Path(test["lungs"]), case, load_volume(e["label"]).spacing)
        region = Path(test["lungs"]).parent / "lungs_near"
    for where, reg in (("in_lung", region), ("whole", None)):
        if where == "in_lung" and reg is None:
            continue
        rep = work / "eval" / test["name"] / run_id / f"froc_{where}.json"
        if not rep.exists():
            sh(["froc", "--prob", pred, "--gt", test["scans"], "--organ", "lung", "--out", rep,
                "--label-map", test["eval_label_map"], "--min-size-mm3", MIN_CANDIDATE_MM3,
                *(["--region", reg] if reg is not None else [])], log)
        r = json.loads(rep.read_text())
        out[where] = {k: r.get(k) for k in ("sensitivity_at", "cpm", "sensitivity_at_small", "cpm_small", "lesions",
                                             "small_lesions", "scans", "operating_point")}
    return out


def read_report(rep: Path) -> dict:
    with open(rep / "metrics.csv", newline="") as fh:
        cases = {r["case"]: r for r in csv.DictReader(fh)}
    with open(rep / "lesions.csv", newline="") as fh:
        lesions = [{"case": r["case"], "diameter_mm": float(r["diameter_mm"]), "detected": r["detected"] == "True"}
                   for r in csv.DictReader(fh)]
    num = lambda v: None if v in ("", None) else float(v)  # noqa: E731
    per_case = {c: {"dice": num(r["tumour_dice"]), "nsd": num(r["tumour_nsd"]), "fp": int(float(r["false_positives"])),
                    "detected": int(float(r["detected"])), "lesions": int(float(r["gt_lesions"])),
                    "volume_ratio": (num(r["tumour_volume_ml_pred"]) / num(r["tumour_volume_ml_gt"])
                                     if num(r.get("tumour_volume_ml_gt")) else None)}
                for c, r in cases.items()}
    return {"cases": per_case, "lesions": lesions}


def near_lung(lungs: Path, case: str, spacing) -> np.ndarray:
    """The threshold lung mask of a whole scan grown by LUNG_REACH_MM (computed once per scan, kept beside it)."""
    from scipy import ndimage

    from freetumor.io import load_volume, save_volume

    dst = lungs.parent / "lungs_near" / f"{case}.nii.gz"
    if dst.exists():
        return np.asarray(load_volume(dst).array) > 0
    mask = lungs / f"{case}_organs.nii.gz"  # organs' name for a case's mask (<case>.nii.gz before it)
    vol = load_volume(mask if mask.exists() else lungs / f"{case}.nii.gz")
    near = ndimage.binary_dilation(np.asarray(vol.array) > 0, structure=ball(LUNG_REACH_MM, spacing))
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_volume(vol.with_array(near.astype(np.uint8)), dst)
    return near



# ----------------------------------------------------------------------------- run result files
def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    tmp.replace(path)


def commit_file(path: Path, message: str) -> None:
    """``git add`` + ``git commit`` of one file (only it), retried while another git command holds the lock."""
    for attempt in range(10):
        a = subprocess.run(["git", "-C", str(REPO), "add", "--", str(path)], capture_output=True, text=True)
        c = subprocess.run(["git", "-C", str(REPO), "commit", "-q", "-m", message, "--", str(path)],
                           capture_output=True, text=True) if a.returncode == 0 else a
        if c.returncode == 0 or "nothing" in (c.stdout + c.stderr):
            return
        time.sleep(2 + 3 * attempt)
    print(f"warning: could not commit {path}: {(c.stderr or c.stdout).strip()[:200]}", file=sys.stderr)


def signature(args, split: dict, tests: list[dict], steps: int | None) -> str:
    """What makes runs comparable: recipes, budgets, split, test sets (names and sizes)."""
    key = {"geometry": geometry(args.placement), "stage0": stage0_recipe(args.placement), "host": HOST_RECIPE, "stage1": SYNTH_RECIPE,
           "steps": steps, "synth_steps": args.synth_steps, "config": "lung-cpu-tiny",
           "split": {p: split[p]["crops"] for p in ("pool", "val", "test")}, "window_mm": WINDOW_MM,
           "tests": sorted((t["name"], t["n_crops"], t["n_scans"]) for t in tests),
           "limit": args.limit, "hosts": args.hosts, "froc_min_mm3": MIN_CANDIDATE_MM3}
    if args.every != 1:
        key["every"] = args.every
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def load_runs(folder: Path, sig: str, judge: str = "stage0") -> dict:
    """(K, seed, arm) -> result of every run file in ``folder`` with the signature ``sig`` (generator runs:
    and the QC ``judge``)."""
    out = {}
    for p in sorted(folder.glob("k*_s*_*.json")) if folder.is_dir() else []:
        try:
            r = json.loads(p.read_text())
        except ValueError:
            continue
        if r.get("signature") == sig and (r["arm"] != "generator" or r.get("judge", "stage0") == judge):
            out[(int(r["k"]), int(r["seed"]), r["arm"])] = r
    return out


# ----------------------------------------------------------------------------- summaries and comparisons
def bin_of(d: float) -> str:
    return next(label for label, lo, hi in BINS if lo <= d < hi)


def mean_or_none(vals) -> float | None:
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return round(float(np.mean(vals)), 4) if vals else None


def per_case_mean(runs: list[dict], test: str, metric: str) -> dict[str, float | None]:
    cases = sorted(runs[0]["tests"][test]["cases"])
    return {c: mean_or_none([r["tests"][test]["cases"][c][metric] for r in runs]) for c in cases}


def arm_summary(runs: list[dict]) -> dict:
    """One arm at one K over its seeds: per test set Dice / NSD (seed means), detection by diameter,
    lesion voxels called background, FROC, and what the runs saw."""
    out: dict = {"seeds": len(runs), "seed_list": sorted(r["seed"] for r in runs)}
    names = {"centred": "", "shifted": "_shifted", "composite": "_composite"}
    for test, suffix in names.items():
        if test not in runs[0]["tests"]:
            continue
        for metric in ("dice", "nsd", "lesion_called_background"):
            by_seed = [mean_or_none(c[metric] for c in r["tests"][test]["cases"].values()) for r in runs]
            out[f"{metric}{suffix}"] = mean_or_none(by_seed)
            if metric == "dice":
                out[f"dice{suffix}_by_seed"] = by_seed
        by_bin = {label: [0, 0] for label, _, _ in BINS}
        for r in runs:
            for les in r["tests"][test]["lesions"]:
                b = by_bin[bin_of(les["diameter_mm"])]
                b[0] += int(les["detected"])
                b[1] += 1
        out[f"detection{suffix}"] = {k: {"detected": v[0], "lesions": v[1],
                                         "sensitivity": round(v[0] / v[1], 4) if v[1] else None}
                                     for k, v in by_bin.items()}
        ratios = [v for v in per_case_mean(runs, test, "volume_ratio").values() if v is not None]
        out[f"volume_ratio_median{suffix}"] = round(float(np.median(ratios)), 3) if ratios else None
        out[f"n{suffix or '_centred'}"] = len(runs[0]["tests"][test]["cases"])
    if out.get("dice") is not None and out.get("dice_shifted") is not None:
        out["shortcut_gap"] = round(out["dice"] - out["dice_shifted"], 4)
    scans = [r["tests"].get("scans") for r in runs]
    if all(scans):
        for where in ("in_lung", "whole"):
            if where not in scans[0]:
                continue
            f = [s[where] for s in scans]
            out[f"froc_{where}"] = {
                "sensitivity_at": {str(k): mean_or_none(x["sensitivity_at"].get(str(k)) for x in f) for k in FP_RATES},
                "cpm": mean_or_none(x["cpm"] for x in f),
                "sensitivity_at_small": {str(k): mean_or_none((x.get("sensitivity_at_small") or {}).get(str(k))
                                                              for x in f) for k in FP_RATES},
                "lesions": f[0]["lesions"], "small_lesions": f[0].get("small_lesions"), "scans": f[0]["scans"],
                "operating_point": {"threshold": f[0]["operating_point"]["threshold"],
                                    "sensitivity": mean_or_none(x["operating_point"]["sensitivity"] for x in f),
                                    "fp_per_scan": mean_or_none(x["operating_point"]["fp_per_scan"] for x in f)}}
    out["labelled_share"] = mean_or_none(r["run"].get("labelled_share") for r in runs)
    status: dict = {}
    for r in runs:
        for k, v in (r["run"].get("synth_status") or {}).items():
            status[k] = status.get(k, 0) + v
    if status:
        out["synth_status"] = status
        out["accepted_per_try"] = mean_or_none(r["run"].get("accepted_per_try") for r in runs)
    return out


def compare(a: list[dict], b: list[dict], test: str, metric: str = "dice") -> dict:
    """B minus A on one crop test set: per-case values averaged over the seeds both arms have, paired
    t / Wilcoxon tests and a paired bootstrap CI (``freetumor.evaluation.stats``)."""
    from freetumor.evaluation.stats import paired_bootstrap_ci, paired_tests

    seeds = sorted({r["seed"] for r in a} & {r["seed"] for r in b})
    a = [r for r in a if r["seed"] in seeds]
    b = [r for r in b if r["seed"] in seeds]
    ma, mb = per_case_mean(a, test, metric), per_case_mean(b, test, metric)
    cases = sorted(ma)
    va, vb = [ma[c] for c in cases], [mb[c] for c in cases]
    t = paired_tests(va, vb)
    ci = paired_bootstrap_ci(va, vb) if t["n"] > 1 else (None, None)
    return {"n": t["n"], "seeds": seeds, "mean_diff": None if t["mean_diff"] is None else round(t["mean_diff"], 4),
            "ci95": [None if v is None else round(float(v), 4) for v in ci],
            "t_p": (t.get("t_test") or {}).get("p"), "wilcoxon_p": (t.get("wilcoxon") or {}).get("p")}


def comparisons(by_arm: dict[str, list[dict]]) -> dict:
    """Every arm against every baseline before it, on centred, shifted and composite Dice."""
    out = {}
    for i, base in enumerate(ARMS):
        if base not in BASELINES or base not in by_arm:
            continue
        for arm in ARMS[i + 1:]:
            if arm not in by_arm:
                continue
            out[f"{arm}_vs_{base}"] = {test: compare(by_arm[base], by_arm[arm], test)
                                       for test in CROP_SETS if test in by_arm[arm][0]["tests"]}
    return out


def targets(arms: dict, comps: dict, by_arm: dict) -> dict:
    """The issue's targets at the headline K, each with its measured value and met / not met."""
    out: dict = {}
    have = [a for a in ARMS if a in arms and arms[a].get("dice_shifted") is not None]
    gaps = {a: arms[a].get("shortcut_gap") for a in have}
    out["shortcut"] = {"gaps": gaps, "required": f"|centred - shifted| <= {TARGETS['shortcut_gap']} for every arm",
                       "met": bool(gaps) and all(g is not None and abs(g) <= TARGETS["shortcut_gap"]
                                                 for g in gaps.values())}
    if "none" in arms and "stage0" in arms:
        d = round(arms["none"]["dice_shifted"] - arms["stage0"]["dice_shifted"], 4)
        out["none_vs_stage0_shifted"] = {"diff": d, "required": f">= {TARGETS['none_vs_stage0']}",
                                         "met": d >= TARGETS["none_vs_stage0"]}
    fps = {a: (arms[a].get("froc_in_lung") or {}).get("operating_point", {}).get("fp_per_scan") for a in have}
    if any(v is not None for v in fps.values()):
        out["fp_in_lung"] = {"fp_per_scan_at_0.5": fps, "required": f"<= {TARGETS['fp_in_lung']} per scan",
                             "met_by": [a for a, v in fps.items() if v is not None and v <= TARGETS["fp_in_lung"]]}
    synth = [a for a in SYNTH_ARMS if a in have]
    bases = [a for a in BASELINES if a in have]
    if synth and bases:
        best = max(synth, key=lambda a: arms[a]["dice_shifted"])
        base = max(bases, key=lambda a: arms[a]["dice_shifted"])
        c = compare(by_arm[base], by_arm[best], "shifted")
        met = c["mean_diff"] is not None and c["mean_diff"] >= TARGETS["gain"] and (c["ci95"][0] or 0) > 0
        out["gain"] = {"synthesis_arm": best, "baseline_arm": base, "dice_shifted_diff": c["mean_diff"],
                       "ci95": c["ci95"], "t_p": c["t_p"], "required": f">= +{TARGETS['gain']} with the CI above 0 "
                       f"(goal +{TARGETS['goal']})", "met": bool(met)}
        small = {a: (arms[a].get("detection_composite") or {}).get("<10 mm", {}).get("sensitivity") for a in have}
        if small.get(best) is not None:
            top = max(v for a, v in small.items() if a in bases and v is not None)
            out["early_lesions"] = {"composite_sensitivity_below_10mm": small, "required":
                                    "best synthesis arm not below the best baseline", "met": small[best] >= top}
    return out


# ----------------------------------------------------------------------------- README tables
def fmt(v, digits=3) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown_table(result: dict) -> str:
    """Markdown tables of a results JSON: per K the arms (centred, shifted, composite Dice, shortcut gap,
    lesion voxels called background, whole-scan FROC, labelled share, QC acceptance), the paired
    differences, and the targets."""
    lines = [f"Runs finished: {result['runs_done']} of {result['runs_planned']} "
             f"(budget {result['steps']} steps; signature {result['signature']})."]
    for k, byk in result["by_k"].items():
        arms = byk["arms"]
        if not arms:
            continue
        seeds = ", ".join(f"{a}: {s['seeds']} seed(s)" for a, s in arms.items())
        lines += ["", f"K = {k} labelled crops ({seeds}):", "",
                  "| arm | Dice centred | Dice shifted | gap | Dice composite | nodule voxels called background "
                  "(shifted) | FROC in lung: sens. @ 1 / 2 / 4 / 8 FP | CPM | FP / scan in lung @ 0.5 "
                  "| labelled share | accepted / try |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for arm in ARMS:
            if arm not in arms:
                continue
            a = arms[arm]
            f = a.get("froc_in_lung") or {}
            sens = " / ".join(fmt(f.get("sensitivity_at", {}).get(str(r)), 2) for r in FP_RATES) if f else "-"
            lines.append(f"| `{arm}` | {fmt(a.get('dice'))} | {fmt(a.get('dice_shifted'))} | {fmt(a.get('shortcut_gap'))} "
                         f"| {fmt(a.get('dice_composite'))} | {fmt(a.get('lesion_called_background_shifted'), 2)} "
                         f"| {sens} | {fmt(f.get('cpm'), 2)} | {fmt((f.get('operating_point') or {}).get('fp_per_scan'), 0)} "
                         f"| {fmt(a.get('labelled_share'), 2)} | {fmt(a.get('accepted_per_try'), 2)} |")
        comps = byk["comparisons"]
        if comps:
            lines += ["", "| paired difference in Dice (per crop, seed-averaged) | centred | shifted (95% CI) | composite |",
                      "|---|---|---|---|"]
            for name, c in comps.items():
                sh_ = c.get("shifted") or {}
                ci = sh_.get("ci95") or [None, None]
                lines.append(f"| `{name.replace('_vs_', '` − `')}` | {fmt((c.get('centred') or {}).get('mean_diff'))} "
                             f"| {fmt(sh_.get('mean_diff'))} ({fmt(ci[0])} to {fmt(ci[1])}) "
                             f"| {fmt((c.get('composite') or {}).get('mean_diff'))} |")
    t = result.get("targets") or {}
    if t:
        lines += ["", f"Targets (K = {result['k']}):", ""]
        for name, v in t.items():
            met = v.get("met")
            met = ("met by " + (", ".join(v["met_by"]) or "no arm")) if "met_by" in v else ("met" if met else "not met")
            shown = {kk: vv for kk, vv in v.items() if kk not in ("met", "met_by", "required")}
            lines.append(f"- {name}: {json.dumps(shown)}; required {v['required']}: **{met}**")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="See the module docstring and docs/benchmarks/fewlabel-lung.md.")
    ap.add_argument("--out", type=Path,
                    help="summary JSON (a .json file; work folder <stem>_work beside it) or a folder")
    ap.add_argument("--table", type=Path, metavar="RESULTS.json",
                    help="only print the markdown tables of an earlier run's summary JSON")
    ap.add_argument("--work", type=Path, help="work folder (default: --out, or <stem>_work beside a .json --out)")
    ap.add_argument("--quick", action="store_true",
                    help="reduced run: K = 10, one seed, 150 steps, every arm, every 3rd test crop, no whole scans")
    ap.add_argument("--test", type=Path, action="append", default=[], metavar="DATALIST",
                    help="also score the trained models on this labelled nodule datalist (repeatable)")
    ap.add_argument("--split", type=Path, default=SPLIT_FILE, help="stored patient-wise split (made when absent)")
    ap.add_argument("--results", type=Path, help="folder of the per-run result files (default: "
                    "benchmarks/results/fewlabel_lung, or <work>/results with --quick)")
    ap.add_argument("--commit", action="store_true", help="git-commit each per-run result file as it is written")
    ap.add_argument("--summary-only", action="store_true", help="train nothing: rebuild the summary from the run "
                    "files present (the test sets are prepared to check the signature)")
    ap.add_argument("--only", type=str, help="comma list of K:seed pairs to run now, e.g. 10:0,10:1 (the summary "
                    "still covers every finished run)")
    ap.add_argument("--arms", type=str, help=f"comma list of arms to run now (default: all: {','.join(ARMS)})")
    ap.add_argument("--placement", choices=PLACEMENTS, default="random",
                    help="labelled crops at random offsets in an air canvas (default) or pasted into host lung "
                         "(data.crop_placement=host; stage0 then uses the hosts as context only)")
    ap.add_argument("--judge", choices=JUDGES, default="stage0",
                    help="the generator arm's frozen segmentor and QC judge: the stage0 or the none arm's model")
    ap.add_argument("--k", type=str, help=argparse.SUPPRESS)
    ap.add_argument("--seeds", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--synth-steps", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=int, help=argparse.SUPPRESS)          # tests: first N test and val crops
    ap.add_argument("--hosts", type=str, help=argparse.SUPPRESS)          # tests: host subset (comma list)
    ap.add_argument("--no-scans", action="store_true", help=argparse.SUPPRESS)  # tests: skip the whole scans
    args = ap.parse_args(argv)
    if args.table is None and args.out is None:
        ap.error("--out is required (or --table RESULTS.json)")
    if args.table is not None:
        return args
    base = QUICK if args.quick else FULL
    args.k = [int(x) for x in args.k.split(",")] if args.k else base["k"]
    for key in ("seeds", "steps", "synth_steps"):
        if getattr(args, key) is None:
            setattr(args, key, base[key])
    args.every = QUICK_EVERY if args.quick else 1
    if args.quick:
        args.no_scans = True
    if args.out.suffix == ".json":
        args.json = args.out
        args.work = args.work or args.out.with_name(args.out.stem + "_work")
    else:
        args.json = args.out / "results.json"
        args.work = args.work or args.out
    if args.results is None:
        args.results = args.work / "results" if (args.quick or args.limit) else RESULTS
    args.arms = [a.strip() for a in args.arms.split(",")] if args.arms else list(ARMS)
    for a in args.arms:
        if a not in ARMS:
            ap.error(f"--arms: unknown arm {a!r}; choose from {', '.join(ARMS)}")
    args.only_pairs = None
    if args.only:
        try:
            args.only_pairs = {(int(a), int(b)) for a, b in (x.split(":") for x in args.only.split(","))}
        except ValueError:
            ap.error(f"--only: expected K:seed pairs like 10:0,10:1, got {args.only!r}")
    return args


def rel(p) -> str:
    """A path as it may be stored: relative to the repository or to the datasets folder, else its name."""
    p = Path(p)
    for root, tag in ((REPO, ""), (DATASETS, "datasets/")):
        try:
            return tag + str(p.resolve().relative_to(root.resolve()))
        except ValueError:
            pass
    return p.name


def run(args) -> dict:
    t_start = time.time()
    vois = DATASETS / "lidc_nodule_vois"
    if not vois.is_dir():
        raise Failure(f"{vois}: real CT not available (the LIDC nodule crops)")
    for t in args.test:  # before anything is written
        if not t.is_file():
            raise Failure(f"{t}: datalist not found")
        check_test_datalist(t.resolve())
    entries = {e["case"]: e for e in crop_entries(vois)}
    split = load_split(args.split, sorted(entries), SPLIT_SEED, store=False)
    pool = split["pool"]["crops"]
    pool_patients = len({patient_of(c) for c in pool})
    for k in args.k:
        if k > pool_patients:
            raise Failure(f"K = {k} needs {k} labelled patients, the training pool has {pool_patients}")
    test_cases = split["test"]["crops"][:: args.every]
    test_cases = test_cases[: args.limit] if args.limit else test_cases
    check_crops_fit([entries[c] for c in test_cases], "the LIDC test crops")
    split = load_split(args.split, sorted(entries), SPLIT_SEED)  # now stored (when new)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    log: list = []
    nodules_map = work / "nodules_label_map.json"
    nodules_map.write_text(json.dumps(NODULES_MAP))

    # 1. test sets: centred crops, shifted crops, composite, whole scans, --test datalists
    test_cases, val_cases = split["test"]["crops"][:: args.every], split["val"]["crops"]
    if args.limit:
        test_cases, val_cases = test_cases[: args.limit], val_cases[: args.limit]
    test_entries = [entries[c] for c in test_cases]
    crop_sets = {}
    lidc = write_datalist(work / "data" / "lidc_test_crops.json", test_entries, str(nodules_map))
    crop_sets["centred"] = prepare_test_set("lidc_crops", lidc, work, log, nodules_map)
    shifted = shifted_crops(test_entries, work / "data" / "lidc_test_crops_shifted.json", nodules_map)
    crop_sets["shifted"] = prepare_test_set("lidc_crops_shifted", shifted, work, log, nodules_map)
    scans_dir = DATASETS / "lidc_full_scans"
    scan_set = None
    scan_rows = [(p, scans_dir / p / "image.nii.gz", scans_dir / p / "label.nii.gz") for p in TEST_PATIENTS
                 if (scans_dir / p).is_dir()]
    if scan_rows:
        comp = composite_crops(test_entries, scan_rows, work / "data" / "composite.json", nodules_map,
                               N_COMPOSITE // args.every)
        crop_sets["composite"] = prepare_test_set("composite", comp, work, log, nodules_map)
    if not args.no_scans and scan_rows:
        rows = [{"image": str(i), "label": str(lab), "patient": p, "whole_scan": True} for p, i, lab in scan_rows]
        dl = write_datalist(work / "data" / "lidc_full_scans.json", rows, str(nodules_map),
                            keep=("image", "label", "patient", "whole_scan"))
        scan_set = prepare_test_set("lidc_full_scans", dl, work, log, nodules_map)
    extra_sets = [prepare_test_set(f"test{i + 1}_{t.stem}", t.resolve(), work, log, nodules_map)
                  for i, t in enumerate(args.test)]
    pooled = pooled_set(crop_sets, work)
    all_tests = list(crop_sets.values()) + ([scan_set] if scan_set else []) + extra_sets

    # 2. labels (chest3) of the validation crops, hosts
    chest3 = lambda c: work / "labels" / f"{c}.nii.gz"  # noqa: E731
    for c in val_cases:
        write_crop_chest3(entries[c], chest3(c))
    names = args.hosts.split(",") if args.hosts else list(HOSTS)
    for n in names:
        if n not in HOSTS:
            raise Failure(f"--hosts: unknown host {n!r}; choose from {', '.join(HOSTS)}")
    slabs = {n: host_slabs(n, work, log) for n in names if (DATASETS / HOSTS[n][0]).exists()}
    if not any(slabs.values()):
        raise Failure(f"{DATASETS}: no host chest found ({', '.join(HOSTS)})")
    all_slabs = [s for n in slabs for s in slabs[n]]
    hosts_dl = write_datalist(work / "data" / "hosts_all.json", all_slabs, "chest3")

    def seed_data(k: int, seed: int) -> tuple[Path, dict, list[str]]:
        labelled = labelled_crops(pool, k, seed)
        for c in labelled:
            write_crop_chest3(entries[c], chest3(c))
        d = work / "runs" / f"k{k}" / f"s{seed}"
        lab_rows = [{"image": entries[c]["image"], "label": str(chest3(c)), "fold": 1} for c in labelled]
        val_rows = [{"image": entries[c]["image"], "label": str(chest3(c)), "fold": 0} for c in val_cases]
        data = {"labelled": write_datalist(d / "labelled.json", lab_rows, "chest3"),
                "trainval": write_datalist(d / "trainval.json", lab_rows + val_rows, "chest3"),
                "profile": d / "profile.json"}
        return d, data, labelled

    # 3. the step budget (validation plateau of stage0, K = 10, seed 0), then the signature of the runs
    budget = None
    if args.steps is None and args.summary_only:
        stored = args.results / "budget.json"
        if not stored.exists():
            raise Failure(f"{stored}: no step budget chosen yet (run without --summary-only first)")
        budget = json.loads(stored.read_text())
        args.steps = budget["steps"]
    if args.steps is None:
        d, data, _ = seed_data(10, 0)
        budget = choose_budget(data, 0, work, log, args.results / "budget.json",
                               signature(args, split, all_tests, None), hosts_dl, args.placement)
        args.steps = budget["steps"]
        if args.commit:
            commit_file(args.results / "budget.json", f"few-label lung experiment: step budget {args.steps} "
                                                      f"(stage0 validation plateau, Real CT)")
    sig = signature(args, split, all_tests, args.steps)

    # 4. every (K, seed, arm) without a result file: train (or reuse the work folder's run), score, write
    results = args.results.resolve() / "runs"
    done = load_runs(results, sig, args.judge)
    for k in args.k:
        for seed in range(args.seeds):
            if args.summary_only or (args.only_pairs is not None and (k, seed) not in args.only_pairs):
                continue
            todo = [a for a in args.arms if (k, seed, a) not in done]
            if not todo:
                continue
            d, data, labelled = seed_data(k, seed)
            if "procedural" in todo and not data["profile"].exists():
                nod = write_datalist(d / "labelled_nodules.json", [entries[c] for c in labelled], str(nodules_map))
                sh(["lesions", "fit", "--datalist", nod, "--label-map", nodules_map, "--organ", "lung",
                    "--out", data["profile"]], log)
            for arm in todo:
                t0 = time.time()
                model = arm_model(arm, d, data, hosts_dl, seed, args.steps, args.synth_steps, log, args.placement,
                                  args.judge)
                tag = run_tag(arm, args.placement, args.judge)
                run_id = f"k{k}_s{seed}_{arm}{tag}_n{args.steps}"
                tests_out = split_sets(score_crops(model, pooled, work, run_id, log), crop_sets)
                if scan_set is not None:
                    tests_out["scans"] = score_scans(model, scan_set, work, run_id, log)
                for t in extra_sets:
                    r = {}
                    if t["crops"]:
                        r["crops"] = score_crops(model, t, work, run_id, log)
                    if t["scans"]:
                        r["scans"] = score_scans(model, t, work, run_id, log)
                    tests_out[t["name"]] = r
                rec = {"signature": sig, "k": k, "seed": seed, "arm": arm, "steps": args.steps,
                       "placement": args.placement, **({"judge": args.judge} if arm == "generator" else {}),
                       "labelled_crops": labelled, "run": run_facts(model.parent), "tests": tests_out,
                       "seconds": round(time.time() - t0, 1)}
                path = results / f"k{k}_s{seed}_{arm}{tag.replace('-', '_')}.json"
                write_json(path, rec)
                done[(k, seed, arm)] = rec
                if args.commit:
                    commit_file(path, f"few-label lung experiment: K = {k}, seed {seed}, {arm} scored "
                                      f"(Real CT, {args.steps} steps)")
                print(f"K={k} seed {seed} {arm}: centred Dice "
                      f"{mean_or_none(c['dice'] for c in tests_out['centred']['cases'].values())}, shifted "
                      f"{mean_or_none(c['dice'] for c in tests_out['shifted']['cases'].values())} "
                      f"({time.time() - t_start:.0f} s)", file=sys.stderr, flush=True)

    # 5. the summary from every run file present
    by_k = {}
    for k in args.k:
        by_arm = {a: [done[(k, s, a)] for s in range(args.seeds) if (k, s, a) in done] for a in ARMS}
        by_arm = {a: v for a, v in by_arm.items() if v}
        arms = {a: arm_summary(v) for a, v in by_arm.items()}
        extra = {}
        for t in extra_sets:
            extra[t["name"]] = {a: arm_summary([{**r, "tests": {"centred": r["tests"][t["name"]]["crops"],
                                                              **({"scans": r["tests"][t["name"]]["scans"]}
                                                                 if "scans" in r["tests"][t["name"]] else {})}}
                                                for r in v]) if "crops" in v[0]["tests"][t["name"]] else {}
                                for a, v in by_arm.items()}
        by_k[str(k)] = {"arms": arms, "comparisons": comparisons(by_arm), "tests": extra,
                        "labelled_crops": {str(s): labelled_crops(pool, k, s) for s in range(args.seeds)}}
        if k == args.k[0]:
            head_by_arm = by_arm
    k0 = str(args.k[0])
    head = by_k[k0]["arms"]
    planned = len(args.k) * args.seeds * len(ARMS)
    counted = [key for key in done if key[0] in args.k and key[1] < args.seeds]
    result = {
        "experiment": "experiment_fewlabel_lung",
        "data": "Real CT (LIDC-IDRI crops and whole chests; pyradiomics and NSCLC-Radiomics host chests)",
        "mode": "quick" if args.quick else "full",
        "command": "python benchmarks/experiment_fewlabel_lung.py " + " ".join(
            rel(a) if os.sep in a else a for a in sys.argv[1:]),
        "k": args.k[0], "steps": args.steps, "synth_steps": args.synth_steps, "signature": sig,
        "budget": budget, "runs_done": len(counted), "runs_planned": planned, "complete": len(counted) >= planned,
        "arms": head, "comparisons": by_k[k0]["comparisons"],
        "targets": targets(head, by_k[k0]["comparisons"], head_by_arm),
        "by_k": by_k,
        "split": {"file": rel(args.split), "seed": split["seed"],
                  **{p: {"crops": len(split[p]["crops"]), "patients": len(split[p]["patients"])}
                     for p in ("pool", "val", "test")},
                  "used": {"test_crops": len(test_cases), "val_crops": len(val_cases)}},
        "test_sets": {name: {"crops": t["n_crops"], "scans": t["n_scans"]} for name, t in
                      [*crop_sets.items(), *([("lidc_full_scans", scan_set)] if scan_set else []),
                       *[(t["name"], t) for t in extra_sets]]},
        "whole_scan_tests": list(TEST_PATIENTS) if scan_set else [],
        "hosts": {"slabs": [{k: (rel(v) if k in ("image", "label") else v) for k, v in s.items()} for s in all_slabs],
                  "lung_ml": round(sum(s["lung_ml"] for s in all_slabs), 1)},
        "placement": args.placement, "judge": args.judge,
        "recipes": {"geometry": geometry(args.placement), "stage0": stage0_recipe(args.placement), "host_arms": HOST_RECIPE, "stage1": SYNTH_RECIPE,
                    "config": "lung-cpu-tiny"},
        "results_folder": rel(args.results),
        "seconds": round(time.time() - t_start, 1),
        "commands": [{**c, "cmd": " ".join(rel(x) if os.sep in x else x for x in c["cmd"].split(" "))} for c in log],
    }
    return result


def brief(result: dict) -> dict:
    keys = ("dice", "dice_shifted", "dice_composite", "nsd", "nsd_shifted", "shortcut_gap",
            "lesion_called_background_shifted", "labelled_share", "accepted_per_try")
    out = {"arms": {}}
    for a, s in result["arms"].items():
        out["arms"][a] = {k: s.get(k) for k in keys}
        f = s.get("froc_in_lung")
        if f:
            out["arms"][a].update(froc_cpm_in_lung=f["cpm"], fp_per_scan_in_lung=f["operating_point"]["fp_per_scan"])
    out.update(k=result["k"], mode=result["mode"], steps=result["steps"], runs_done=result["runs_done"],
               runs_planned=result["runs_planned"], targets={n: t.get("met", t.get("met_by")) for n, t in
                                                             result["targets"].items()},
               tests={n: {k: {a: {m: v for m, v in s.items() if m in ("dice", "froc_in_lung")} for a, s in arms.items()}
                          for k, arms in [(k, byk["tests"].get(n, {})) for k, byk in result["by_k"].items()]}
                      for n in (result["by_k"][str(result["k"])]["tests"])},
               seconds=result["seconds"])
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.table is not None:
        try:
            print(markdown_table(json.loads(args.table.read_text())))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"error: {args.table}: not a results JSON of this experiment ({type(exc).__name__}: {exc})",
                  file=sys.stderr)
            return 1
        return 0
    try:
        result = run(args)
    except Failure as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_json(args.json, result)
    print(json.dumps({**brief(result), "json": str(args.json)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
