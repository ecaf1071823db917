#!/usr/bin/env python
"""Synthesis speed and memory figures, printed as one JSON object.

Figures (targets from issue #2):

* ``ms_per_tumour_96_liver_median`` - median wall time of one rule-based
  tumour (size ``mix``) in a 96^3 liver patch at 1.5 mm, no generator
  (target <= 30 ms on 2 CPU cores); per size class too.
* ``startup_s`` - a fresh interpreter: ``import freetumor`` to the first
  tumour on that patch (target <= 3 s).
* ``peak_rss_mb`` - peak resident memory of a fresh process that runs the
  whole-volume ``synthesize`` on the 512x512 slab, PNG included (target <= 1.5 GB).
* ``synthesize_vs_nibabel_ratio`` - whole-volume synthesis of the 512x512x20
  slab (load image and label, one tumour, write image, label and JSON) divided
  by a bare nibabel load + save of the same image, medians of alternating runs
  in one process (target <= 1.5). ``..._with_png`` adds the PNG figure.

The slab is ``../shared/datasets/totalseg_example/slab1mm_image.nii.gz`` when
present; otherwise a 512x512x20 phantom at 0.98 x 0.98 x 2 mm stands in (the
``slab_source`` field says which).

Run: ``python benchmarks/bench_synthesis.py [--repeats N]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SLAB = REPO.parent / "shared" / "datasets" / "totalseg_example"


def liver_patch(tmp: Path):
    """A 96^3 patch at 1.5 mm centred on the liver of an abdominal phantom."""
    from freetumor.io import Volume, save_volume
    from freetumor.phantom import make_case

    image, label = make_case("abdomen", seed=0, spacing=(1.5, 1.5, 1.5), shape=(224, 176, 120))
    c = np.round(np.argwhere(label.array == 1).mean(axis=0)).astype(int)
    lo = np.clip(c - 48, 0, np.asarray(image.shape) - 96)
    sl = tuple(slice(int(a), int(a) + 96) for a in lo)
    aff = image.affine.copy()
    aff[:3, 3] = image.voxel_to_mm(lo)
    img, lab = Volume(image.array[sl].copy(), aff), Volume(label.array[sl].copy(), aff)
    save_volume(img, tmp / "patch_image.nii.gz")
    save_volume(lab, tmp / "patch_label.nii.gz")
    return img, lab


def slab_pair(tmp: Path):
    if (SLAB / "slab1mm_image.nii.gz").exists():
        return SLAB / "slab1mm_image.nii.gz", SLAB / "slab1mm_label_freetumor7.nii.gz", "totalseg_example/slab1mm"
    from freetumor.io import save_volume
    from freetumor.phantom import make_case

    image, label = make_case("abdomen", seed=0, spacing=(0.977, 0.977, 2.0), shape=(512, 512, 20))
    save_volume(image, tmp / "slab_image.nii.gz")
    save_volume(label, tmp / "slab_label.nii.gz")
    return tmp / "slab_image.nii.gz", tmp / "slab_label.nii.gz", "phantom 512x512x20"


def per_tumour_ms(img, lab, repeats: int) -> dict:
    from freetumor.synthesis import Synthesizer

    out = {}
    for size in ("mix", "tiny", "small", "medium", "large"):
        synth = Synthesizer("liver", size=size)
        synth(img, lab, seed=0)  # warm-up
        times = []
        for seed in range(repeats):
            t = time.perf_counter()
            synth(img, lab, seed=seed + 1)
            times.append((time.perf_counter() - t) * 1000)
        out[size] = round(statistics.median(times), 2)
    return out


STARTUP = r"""
import time, sys
t0 = time.perf_counter()
import freetumor
from freetumor.io import load_volume
from freetumor.synthesis import Synthesizer
img, lab = load_volume(sys.argv[1]), load_volume(sys.argv[2])
Synthesizer("liver")(img, lab, seed=0)
print(time.perf_counter() - t0)
"""

PEAK = r"""
import resource, sys
from freetumor.synthesis import synthesize_files
synthesize_files(sys.argv[1], sys.argv[2], "liver", sys.argv[3], count=3, seed=0, png=True)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def run_py(code: str, *args) -> float:
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=True)
    return float(r.stdout.strip().splitlines()[-1])


def whole_volume_ratio(image: Path, label: Path, tmp: Path, repeats: int) -> dict:
    import nibabel as nib

    from freetumor.synthesis import synthesize_files

    def bare():
        img = nib.load(str(image))
        data = np.asanyarray(img.dataobj)
        nib.save(nib.Nifti1Image(data, img.affine, img.header), str(tmp / "bare.nii.gz"))

    bare()
    synthesize_files(image, label, "liver", tmp / "warm", seed=0, png=True)
    b, s, p = [], [], []
    for k in range(repeats):
        t = time.perf_counter(); bare(); b.append(time.perf_counter() - t)
        t = time.perf_counter(); synthesize_files(image, label, "liver", tmp / f"s{k}", seed=k, png=False)
        s.append(time.perf_counter() - t)
        t = time.perf_counter(); synthesize_files(image, label, "liver", tmp / f"p{k}", seed=k, png=True)
        p.append(time.perf_counter() - t)
    mb, ms, mp = statistics.median(b), statistics.median(s), statistics.median(p)
    return {
        "nibabel_load_save_s": round(mb, 4),
        "synthesize_s": round(ms, 4),
        "synthesize_with_png_s": round(mp, 4),
        "synthesize_vs_nibabel_ratio": round(ms / mb, 3),
        "synthesize_with_png_vs_nibabel_ratio": round(mp / mb, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30, help="tumours per size class / whole-volume runs // 3")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        img, lab = liver_patch(tmp)
        per = per_tumour_ms(img, lab, args.repeats)
        startup = [run_py(STARTUP, tmp / "patch_image.nii.gz", tmp / "patch_label.nii.gz") for _ in range(3)]
        s_img, s_lab, source = slab_pair(tmp)
        whole = whole_volume_ratio(s_img, s_lab, tmp, max(3, args.repeats // 3))
        peak = run_py(PEAK, s_img, s_lab, tmp / "peak")
    result = {
        "benchmark": "bench_synthesis",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "ms_per_tumour_96_liver_median": per["mix"],
        "ms_per_tumour_96_liver_by_size": {k: v for k, v in per.items() if k != "mix"},
        "startup_s": round(statistics.median(startup), 3),
        "peak_rss_mb": round(peak, 1),
        "slab_source": source,
        **whole,
        "targets": {
            "ms_per_tumour_96_liver_median": 30,
            "startup_s": 3,
            "peak_rss_mb": 1536,
            "synthesize_vs_nibabel_ratio": 1.5,
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
