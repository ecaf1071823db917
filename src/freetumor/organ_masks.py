"""Organ masks for unlabelled CT: the unlabelled pool of Stage 1 and Stage 2.

``segment_organs`` segments the host organs of every input CT and writes, in
``out``::

    <case>.nii.gz     uint8 organ mask on the input's own grid, abdomen7 or chest3 ids
    datalist.json     {"label_map": ..., "training": [{"image": <CT>, "label": "<case>.nii.gz"}, ...]}

The datalist is what ``freetumor train-synth --unlabeled`` and ``train-seg
--unlabeled`` read (image paths are absolute, labels relative to the datalist).

Engines:

* ``freetumor`` (default): a freetumor segmentor checkpoint (``--model``) run by
  :func:`freetumor.inference.predict_files`. An ``abdomen7`` model gives liver 1,
  pancreas 3 and kidney 5; a ``chest3`` model the lung 1; an ``organ3`` model its
  organ under that organ's abdomen7 / chest3 id. **Predicted tumour classes are
  merged into their organ** (liver tumour 2 -> liver 1, pancreas tumour 4 -> 3,
  kidney tumour 6 -> 5, lung lesion 2 -> 1): the unlabelled pool must hold organ
  masks only, and a tumour the model happens to find is still part of the organ
  the synthetic tumours are placed in.
* ``threshold`` (chest only, no model, no package): lung masks by thresholds, connected
  components, trachea and main-bronchi removal and hole filling
  (:func:`freetumor.lung_threshold.threshold_lung_mask`), chest3 lung 1.
* ``totalsegmentator``: TotalSegmentator's ``total`` task (v2 ids liver 5,
  pancreas 7, kidney_right 2, kidney_left 3) mapped to abdomen7 (1, 3, 5, 5).
* ``lungmask``: lungmask's R231 model (right lung 1, left lung 2) mapped to chest3 lung 1.

The last two are optional: they run only when their package is installed, and
their weights are downloaded by the packages themselves on first use (the user's
choice; freetumor never fetches weights).

Example:
    >>> import numpy as np
    >>> map_labels(np.array([0, 2, 3, 5, 7, 10]), TOTALSEG_TO_ABDOMEN7).tolist()
    [0, 5, 5, 1, 3, 0]
    >>> merge_mapping("abdomen7", "liver")
    ({0: 0, 1: 1, 2: 1, 3: 3, 4: 3, 5: 5, 6: 5}, 'abdomen7')
    >>> merge_mapping("organ3", "pancreas")
    ({0: 0, 1: 3, 2: 3}, 'abdomen7')
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import ConfigError, InputError
from . import __version__
from .config import check_device
from .data import check_cases
from .inference import list_inputs, predict_paths, resample_nearest
from .io import Volume, case_name, load_volume, save_volume, staged_output, to_nifti, write_bytes_atomic
from .labels import CONVENTIONS, default_label_map, get_label_map
from .progress import Progress
from .lung_threshold import threshold_lung_mask
from .organs import get_organ
from .tasks import check_task, organ_classes

__all__ = ["ENGINES", "TOTALSEG_TO_ABDOMEN7", "LUNGMASK_TO_CHEST3", "map_labels", "merge_mapping", "segment_organs"]

ENGINES = ("freetumor", "threshold", "totalsegmentator", "lungmask")

# TotalSegmentator ``total`` task (v2) -> abdomen7 organ ids.
TOTALSEG_TO_ABDOMEN7 = {5: 1, 7: 3, 2: 5, 3: 5}
TOTALSEG_ROIS = ["liver", "pancreas", "kidney_right", "kidney_left"]
# lungmask R231: 1 right lung, 2 left lung -> chest3 lung.
LUNGMASK_TO_CHEST3 = {1: 1, 2: 1}

_PACKAGES = {  # engine -> (module, pip name)
    "totalsegmentator": ("totalsegmentator", "TotalSegmentator"),
    "lungmask": ("lungmask", "lungmask"),
}
# The organ ids of a mask (tumours are merged into their organ): abdomen7 / chest3 without the tumour ids.
_LABEL_NAMES = {name: {"0": "background", **{str(oid): organ for organ, (oid, _t) in CONVENTIONS[name].items()}}
                for name in ("abdomen7", "chest3")}


def map_labels(array: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """``mapping[v]`` for every voxel (uint8); values not in ``mapping`` become 0."""
    a = np.asarray(array)
    if a.dtype.kind == "f":
        a = np.where(np.isfinite(a), np.rint(a), 0)
    a = a.astype(np.int64, copy=False)
    lut = np.zeros(max(mapping) + 1, np.uint8)
    for k, v in mapping.items():
        lut[int(k)] = int(v)
    out = np.zeros(a.shape, np.uint8)
    ok = (a >= 0) & (a < lut.size)
    out[ok] = lut[a[ok]]
    return out


def merge_mapping(task: str, organ: str) -> tuple[dict[int, int], str]:
    """Class map of a freetumor segmentor -> organ ids with tumours merged into the organ; and its label map.

    The ids are those of FreeTumor's own convention for the task (``abdomen7`` or ``chest3``).
    """
    check_task(task)
    lm_name = task if task in ("abdomen7", "chest3") else default_label_map(organ)
    lm = get_label_map(lm_name)
    mapping = {0: 0}
    for name, (organ_cls, tumour_cls) in organ_classes(task, get_organ(organ).name).items():
        mapping[organ_cls] = mapping[tumour_cls] = int(lm.organ_ids(name)[0])
    return dict(sorted(mapping.items())), lm_name


def _need_package(engine: str):
    module, pip_name = _PACKAGES[engine]
    try:
        return __import__(module)
    except ImportError:
        raise ConfigError(f"engine {engine} needs the `{module}` package (pip install {pip_name}); "
                          "its weights are fetched by the user") from None


def _short(exc: BaseException) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:160]


def _on_grid(arr: np.ndarray, affine: np.ndarray, vol: Volume) -> np.ndarray:
    """An engine's label array (with its affine) on ``vol``'s grid."""
    arr = np.asarray(arr)
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.shape == vol.shape and np.allclose(affine, vol.affine, atol=1e-3):
        return arr
    return resample_nearest(arr, np.asarray(affine, np.float64), vol.shape, vol.affine)


def _to_sitk(vol: Volume):
    """A SimpleITK image (LPS) of a volume (RAS affine)."""
    import SimpleITK as sitk  # deferred: the lungmask engine's input only (it was never imported here: a NameError)

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ vol.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(vol.array).transpose(2, 1, 0)))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in lps[:3, 3]])
    img.SetDirection([float(d) for d in (lps[:3, :3] / spacing[None, :]).ravel()])
    return img


def _threshold_engine(device: str | None):
    """Model-free lung masks (:mod:`freetumor.lung_threshold`), chest3 lung id 1; ``device`` unused."""
    def run(vol: Volume) -> np.ndarray:
        return threshold_lung_mask(vol).astype(np.uint8)

    return run, "chest3"


def _totalseg_engine(device: str | None):
    _need_package("totalsegmentator")
    from totalsegmentator.python_api import totalsegmentator  # deferred: optional package

    if device is None:
        import torch  # deferred: the optional engine's own dependency (it was never imported here: a NameError)

        device = "cuda" if torch.cuda.is_available() else "cpu"
    ts_device = device.replace("cuda", "gpu") if device.startswith("cuda") else device

    def run(vol: Volume) -> np.ndarray:
        try:
            res = totalsegmentator(to_nifti(vol), None, ml=True, task="total", roi_subset=TOTALSEG_ROIS,
                                   device=ts_device, quiet=True)
        except Exception as exc:  # the package's own failures, as one line
            raise InputError(vol.name, f"TotalSegmentator failed: {_short(exc)}") from None
        return map_labels(_on_grid(np.asanyarray(res.dataobj), res.affine, vol), TOTALSEG_TO_ABDOMEN7)

    return run, "abdomen7"


def _lungmask_engine(device: str | None):
    _need_package("lungmask")
    force_cpu = device is not None and not str(device).startswith("cuda")
    try:
        from lungmask import LMInferer  # deferred: optional package

        inferer = LMInferer(modelname="R231", force_cpu=force_cpu)
        apply = inferer.apply
    except ImportError:  # lungmask < 0.2.16
        from lungmask import mask as lm_mask  # deferred: optional package

        model = lm_mask.get_model("unet", "R231")

        def apply(img):
            return lm_mask.apply(img, model, force_cpu=force_cpu)

    def run(vol: Volume) -> np.ndarray:
        try:
            seg = np.asarray(apply(_to_sitk(vol)))  # (z, y, x) of the SimpleITK image = our (k, j, i)
        except Exception as exc:
            raise InputError(vol.name, f"lungmask failed: {_short(exc)}") from None
        return map_labels(seg.transpose(2, 1, 0), LUNGMASK_TO_CHEST3)

    return run, "chest3"


def mask_name(image: str | os.PathLike) -> str:
    """The organ mask's file name of a CT: ``<case>_organs.nii.gz``, never the CT's own name.

    Example:
        >>> mask_name("/d/LUNG1-001/image.nii.gz"), mask_name("/d/ct7.nii.gz")
        ('LUNG1-001_organs.nii.gz', 'ct7_organs.nii.gz')
    """
    return f"{case_name(image)}_organs.nii.gz"


def segment_organs(
    image: str | os.PathLike,
    out: str | os.PathLike,
    *,
    engine: str = "freetumor",
    model: str | os.PathLike | None = None,
    device: str | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    skip_bad_cases: bool = False,
) -> list[Path]:
    """Write organ masks (no tumour ids) of every CT in ``image`` and ``out/datalist.json``.

    Args:
        image: a NIfTI file, a DICOM series folder, or a folder of NIfTI files.
        out: output folder.
        engine: ``freetumor``, ``totalsegmentator`` or ``lungmask`` (see the module docstring).
        model: freetumor segmentor checkpoint (required by the ``freetumor`` engine).
        device: ``cpu`` or ``cuda`` (default: CUDA when available).
        progress: show a progress bar.
        log: called with one line per written mask (and the count of bad inputs left out;
            printed when ``log`` is None).
        skip_bad_cases: leave out inputs that fail the up-front check (:func:`~freetumor.data.check_cases`);
            by default one bad input stops the run before anything is read further or written.

    Returns:
        The written masks ``out/<case>_organs.nii.gz`` (input order; :func:`mask_name`).

    Raises:
        ConfigError: unknown engine, missing ``model``, missing optional package.
        CaseErrors: one line per bad input (unless ``skip_bad_cases``).
        InputError: unreadable input or checkpoint. Nothing is written on failure.
    """

    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "freetumor" and model is None:
        raise ConfigError("engine freetumor needs --model SEG.pt (a segmentor checkpoint of `freetumor train-seg`)")
    if engine in _PACKAGES:
        _need_package(engine)
    if engine != "threshold":
        check_device(device)  # before any work; the threshold engine uses no device
    inputs = list_inputs(image)
    names = [case_name(p) for p in inputs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(image, f"two inputs share the case name {dup[0]!r}")
    # every input checked first (readable, 3D, CT in HU), as `freetumor data check` does
    entries = check_cases([{"image": str(p)} for p in inputs], None, image, skip_bad=skip_bad_cases,
                          log=log or print)
    inputs = [Path(e["image"]) for e in entries]

    out = Path(out)
    written: list[Path] = []
    masks: list[Path] = []
    with staged_output(out) as stage:
        if engine == "freetumor":
            # deferred: PyTorch loads for the freetumor engine only, after every input was checked
            from .checkpoints import check_kind, load_checkpoint

            ck = load_checkpoint(model)
            check_kind(ck, model, "segmentor")
            cfg = ck["config"]
            del ck
            mapping, label_map = merge_mapping(cfg.get("task"), cfg.get("organ"))
            tmp = stage / ".predictions"
            preds = predict_paths(model, inputs, tmp, device=device, progress=progress)
            for p, pred_path in zip(inputs, preds):
                pred = load_volume(pred_path)
                vol = pred.with_array(map_labels(pred.array, mapping))
                save_volume(vol, stage / mask_name(p))
                masks.append(p)
                if log:
                    log(f"wrote {out / mask_name(p)}")
            shutil.rmtree(tmp)
            source = {"engine": engine, "model": str(Path(model).resolve()), "model_task": cfg.get("task")}
        else:
            run, label_map = {"threshold": _threshold_engine, "totalsegmentator": _totalseg_engine,
                              "lungmask": _lungmask_engine}[engine](device)
            # one line per case and phase, heartbeats while a case runs (the threshold engine takes about
            # 30 s on a whole chest CT on 2 cores)
            with Progress(progress, done=None) as say:
                for k, p in enumerate(inputs, 1):
                    case, name = f"{k}/{len(inputs)} {case_name(p)}", mask_name(p)
                    say(f"{case}: reading")
                    vol = load_volume(p)
                    say(f"{case}: {engine} on {'x'.join(map(str, vol.shape))} voxels")
                    mask = run(vol)
                    say(f"{case}: writing {name}")
                    save_volume(Volume(mask, vol.affine.copy(), vol.header, vol.path), stage / name)
                    masks.append(p)
                    if log:
                        log(f"wrote {out / name}")
            source = {"engine": engine}
        entries = [{"image": str(Path(p).resolve()), "label": mask_name(p), "tumour": False}
                   for p in masks]
        datalist = {
            "name": "freetumor-organs",
            "description": f"organ masks of unlabelled CT by engine {engine} (tumour predictions merged "
                           "into their organ; no tumour labels)",
            "label_map": label_map,
            "labels": _LABEL_NAMES[label_map],
            "numTraining": len(entries),
            "freetumor_version": __version__,
            **source,
            "training": entries,
        }
        write_bytes_atomic(stage / "datalist.json", (json.dumps(datalist, indent=2) + "\n").encode())
        written = [out / e["label"] for e in entries]
    return written
