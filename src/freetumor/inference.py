"""Sliding-window prediction, written back on each input's native grid.

The CT is oriented to RAS, resampled to the model's spacing and windowed as in
training; the class map predicted there is resampled (nearest neighbour) onto
the input's own voxel grid through the two affines, so the output has the
input's exact shape, affine and header (data type uint8).

With ``probabilities=True`` (``freetumor predict --probabilities``) each case also gets
``<case>_prob.nii.gz``: the softmax probability summed over the model's tumour classes
(``cfg.tumour_classes``), resampled the same way (nearest neighbour) onto the input's grid and
stored as plain (unscaled) float32 in 0..1; voxels outside the foreground crop are 0. It is
what :func:`freetumor.evaluation.froc.froc` (``freetumor froc``) reads. The class map is the
argmax over all classes, so a voxel can be labelled tumour with a summed tumour probability
below 0.5 (or the other way round when there are several tumour classes).

Example:
    >>> import numpy as np
    >>> lab = np.arange(8, dtype=np.uint8).reshape(2, 2, 2)
    >>> resample_nearest(lab, np.eye(4), (2, 2, 2), np.eye(4)).tolist() == lab.tolist()
    True
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from tqdm import tqdm

from .config import check_device
from .data import check_cases
from .errors import ConfigError, InputError
from .io import NIFTI_SUFFIXES, Volume, case_name, check_output_folder, load_volume, save_volume, staged_output

if TYPE_CHECKING:
    import torch

# PyTorch, MONAI and the networks load in Predictor (deferred): a command's inputs are checked
# (predict_files, organ_masks.segment_organs) before it pays for them, so bad input fails at once.


def resample_nearest(src: np.ndarray, src_affine: np.ndarray, shape, affine: np.ndarray, fill: int = 0) -> np.ndarray:
    """Nearest-neighbour resampling of ``src`` (voxel->mm ``src_affine``) onto a target grid."""
    m = np.linalg.inv(src_affine) @ np.asarray(affine, np.float64)
    out = np.full(tuple(shape), fill, dtype=src.dtype)
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    base = m[:3, 0, None, None] * i + m[:3, 1, None, None] * j + m[:3, 3, None, None]
    limits = np.asarray(src.shape)[:, None, None]
    for k in range(shape[2]):  # one slice at a time keeps memory flat for large scans
        idx = np.rint(base + m[:3, 2, None, None] * k).astype(np.int64)
        ok = np.all((idx >= 0) & (idx < limits), axis=0)
        out[..., k][ok] = src[idx[0][ok], idx[1][ok], idx[2][ok]]
    return out


def list_inputs(path: str | os.PathLike) -> list[Path]:
    """A NIfTI file, a DICOM series folder, or a folder of NIfTI files."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such file or folder")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.name.lower().endswith(NIFTI_SUFFIXES))
        return files or [p]
    return [p]


class Predictor:
    """A trained segmentor ready to predict volumes.

    Args:
        model_path: a freetumor checkpoint (``RUNDIR/best.pt``).
        device: ``cpu``, ``cuda`` or ``None`` (CUDA when available).
    """

    def __init__(self, model_path: str | os.PathLike, device: str | None = None):
        import torch  # deferred: PyTorch loads with the first model, after the inputs were checked

        from .checkpoints import load_model  # deferred: as above

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.cfg = load_model(model_path, map_location=self.device)
        self.model.to(self.device).eval()

    def _preprocess(self, vol: Volume):
        import torch  # deferred: loaded by __init__ already (see there)
        from monai.data import MetaTensor  # deferred: as above
        from monai.transforms import Orientation, ScaleIntensityRange, Spacing  # deferred: as above

        d = self.cfg.data
        img = MetaTensor(torch.as_tensor(np.asarray(vol.array, np.float32))[None], affine=torch.as_tensor(vol.affine))
        img = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(img)
        img = Spacing(pixdim=tuple(d.spacing), mode="bilinear")(img)
        a_min, a_max = d.hu_window
        return ScaleIntensityRange(a_min, a_max, 0.0, 1.0, clip=True)(img)

    def _logits(self, vol: Volume) -> tuple[torch.Tensor, np.ndarray]:
        """Class scores ``(1, C, X, Y, Z)`` over the foreground crop and the crop's voxel->mm affine."""
        import torch  # deferred: loaded by __init__ already (see there)
        from monai.inferers import sliding_window_inference  # deferred: as above

        img = self._preprocess(vol)
        affine = np.asarray(img.affine, np.float64)
        x = img.as_tensor()
        # Crop to the foreground (window > 0) as in training and validation, so sliding windows
        # see the same context; everything outside the crop is background.
        fg = np.argwhere(np.asarray(x[0] > 0))
        if len(fg):
            lo, hi = fg.min(axis=0), fg.max(axis=0) + 1
            x = x[:, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            shift = np.eye(4)
            shift[:3, 3] = lo
            affine = affine @ shift
        x = x[None].to(self.device)
        with torch.no_grad():
            amp = self.device.type == "cuda" and self.cfg.train.amp
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                logits = sliding_window_inference(
                    x, tuple(self.cfg.data.roi_size), self.cfg.val.sw_batch_size, self.model,
                    overlap=self.cfg.val.overlap,
                )
        return logits, affine

    def predict_volume(self, vol: Volume) -> Volume:
        """Class map (uint8) on ``vol``'s grid."""
        from .models import class_argmax  # deferred: loaded by __init__ already (see there)

        logits, affine = self._logits(vol)
        pred = class_argmax(logits)[0].cpu().numpy()
        native = resample_nearest(pred, affine, vol.shape, vol.affine)
        return vol.with_array(native)

    def predict_volume_with_probability(
        self, vol: Volume, tumour_classes: Sequence[int] | None = None
    ) -> tuple[Volume, Volume]:
        """Class map (uint8, as :meth:`predict_volume`) and tumour probability on ``vol``'s grid.

        Args:
            vol: the CT.
            tumour_classes: classes whose softmax probabilities are summed (default: the model's
                ``cfg.tumour_classes``; ``abdomen7`` models have three, one per organ).

        Returns:
            ``(labels, probability)``: the probability volume is float32 in 0..1 on the input's
            grid (nearest-neighbour resampling, as the labels), 0 outside the foreground crop,
            with the input's affine and header (stored as plain float32, no integer scaling).
        """
        import torch  # deferred: loaded by __init__ already (see there)

        from .models import class_argmax  # deferred: as above

        classes = [int(c) for c in (self.cfg.tumour_classes if tumour_classes is None else tumour_classes)]
        n = int(self.cfg.num_classes)
        if not classes or any(not 0 < c < n for c in classes):
            raise ConfigError(f"tumour classes must be 1..{n - 1} of the model's {n} classes, got {classes}")
        logits, affine = self._logits(vol)
        pred = class_argmax(logits)[0].cpu().numpy()
        prob = torch.softmax(logits.float(), dim=1)[0, classes].sum(0).clamp_(0.0, 1.0).cpu().numpy()
        del logits
        labels = vol.with_array(resample_nearest(pred, affine, vol.shape, vol.affine))
        native = resample_nearest(prob.astype(np.float32, copy=False), affine, vol.shape, vol.affine)
        return labels, _probability_volume(vol, native)


def _probability_volume(vol: Volume, prob: np.ndarray) -> Volume:
    """``prob`` with ``vol``'s geometry and header, written as plain float32 (no integer scaling)."""
    meta = {k: v for k, v in vol.meta.items() if k != "stored_as"}  # not the CT's int16 storage
    header = None
    if vol.header is not None and hasattr(vol.header, "copy"):
        header = vol.header.copy()
        header.set_data_dtype(np.float32)
        header.set_slope_inter(1.0, 0.0)
        if "cal_min" in header:  # display range of a probability, not the CT's window
            header["cal_min"], header["cal_max"] = 0.0, 1.0
    return Volume(np.asarray(prob, np.float32), vol.affine.copy(), header, vol.path, meta)


def predict_files(
    model_path: str | os.PathLike,
    image: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    device: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    skip_bad_cases: bool = False,
    probabilities: bool = False,
) -> list[Path]:
    """Predict every input (file, DICOM folder or folder of NIfTI) into ``out_dir/<case>.nii.gz``.

    Every input is checked first (readable, 3D, CT in HU); a bad one stops the run before
    anything is written, or is left out with ``skip_bad_cases``. With ``probabilities`` each
    case also gets ``out_dir/<case>_prob.nii.gz`` (see :func:`predict_paths`)."""
    check_device(device)  # before any work: --device bogus or cuda without a GPU is one line
    inputs = list_inputs(image)
    entries = check_cases([{"image": str(p)} for p in inputs], None, image, skip_bad=skip_bad_cases,
                          log=log or print)
    return predict_paths(model_path, [Path(e["image"]) for e in entries], out_dir, device=device,
                         progress=progress, log=log, probabilities=probabilities)


def predict_paths(
    model_path: str | os.PathLike,
    inputs: list[Path],
    out_dir: str | os.PathLike,
    *,
    device: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    probabilities: bool = False,
) -> list[Path]:
    """Predict inputs already checked (:func:`~freetumor.data.check_cases`) into ``out_dir/<case>.nii.gz``.

    With ``probabilities`` each case also gets ``out_dir/<case>_prob.nii.gz``: the tumour
    probability (float32, 0..1) on the input's grid, from the same forward pass
    (:meth:`Predictor.predict_volume_with_probability`). Returns the class-map paths only.
    """
    check_output_folder(out_dir)
    if probabilities:  # refuse before loading the model: x_prob.nii.gz would be written twice
        names = {case_name(p): p for p in inputs}
        for c, p in names.items():
            if f"{c}_prob" in names:
                raise InputError(names[f"{c}_prob"], f"its prediction would overwrite the probability map of case {c}")
    predictor = Predictor(model_path, device)
    written = []
    it = inputs
    if progress:
        it = tqdm(inputs, desc="predict", unit="case", dynamic_ncols=True)
    with staged_output(out_dir) as stage:
        for p in it:
            vol = load_volume(p)
            name = f"{case_name(p)}.nii.gz"
            prob = None
            if probabilities:
                pred, prob = predictor.predict_volume_with_probability(vol)
            else:
                pred = predictor.predict_volume(vol)
            save_volume(pred, stage / name)
            written.append(Path(out_dir) / name)
            if log:
                log(f"wrote {Path(out_dir) / name}")
            if prob is not None:
                prob_name = f"{case_name(p)}_prob.nii.gz"
                save_volume(prob, stage / prob_name)
                if log:
                    log(f"wrote {Path(out_dir) / prob_name}")
    return written
