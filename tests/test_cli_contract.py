"""The one-line-error contract, command by command: every bad input gives exit 1, exactly one
``error:`` line on stderr that names the offending file (or option), no traceback, and nothing
written (no output, no staging folder, no change to the inputs).

The catalogue is a list of rows ``(command, bad input, what the error names)``; adding a command
or an input kind is one line. Rows marked ``slow`` run under ``make test``; the rest (about 40 s on a busy 2-core machine) run
everywhere. Most commands now check their input before PyTorch loads (checkpoint options by their
first bytes), so few slow rows still cost the several seconds of a PyTorch start.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest

from freetumor.io import save_volume
from freetumor.phantom import make_case

from conftest import CLI, never_loaded_checkpoint

SHAPE = (56, 48, 24)  # tiny cases: a check reads every one
PROC_OUT = Path("/proc/freetumor-contract-out")  # no one can write there, not even root


# ----------------------------------------------------------------------------- the inputs, made once
@pytest.fixture(scope="session")
def kit(tmp_path_factory) -> dict:
    """Good and bad files (read-only for the tests); ``kit[name]`` is a path."""
    root = tmp_path_factory.mktemp("contract")
    image, label = make_case("abdomen", seed=5, shape=SHAPE)
    k: dict[str, Path] = {"root": root}

    def put(name: str, vol) -> Path:
        save_volume(vol, root / name)
        k[name] = root / name
        return root / name

    put("good_image.nii.gz", image)
    put("good_label.nii.gz", label)
    put("good2_image.nii.gz", image.with_array(image.array.copy()))
    put("good2_label.nii.gz", label.with_array(label.array.copy()))
    # bad images
    nib.save(nib.Nifti1Image(np.stack([image.array] * 2, -1), image.affine), root / "4d.nii.gz")
    (root / "empty.nii.gz").write_bytes(b"")
    (root / "corrupt.nii.gz").write_bytes((root / "good_image.nii.gz").read_bytes()[:300])
    (root / "notnifti.nii.gz").write_bytes(gzip.compress(b"just some text, not a NIfTI header\n" * 20))
    # a 30000^3 header over 8 voxels: refused before any voxel is read (no MemoryError)
    tiny = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), image.affine)
    raw = bytearray(tiny.header.binaryblock + b"\0" * 4 + np.zeros(8, np.int16).tobytes())
    raw[40:56] = np.array([3, 30000, 30000, 30000, 1, 1, 1, 1], "<i2").tobytes()
    (root / "false_header.nii.gz").write_bytes(gzip.compress(bytes(raw)))
    put("zeros.nii.gz", image.with_array(np.zeros_like(image.array)))
    put("nonhu.nii.gz", image.with_array((image.array.astype(np.int32) + 1024).astype(np.uint16)))
    put("labelmap_as_image.nii.gz", image.with_array(label.array.astype(np.int16)))
    # bad labels
    put("float_label.nii.gz", label.with_array(label.array.astype(np.float32) * 0.75))
    shifted = label.with_array(label.array.copy())
    shifted.affine = shifted.affine.copy()
    shifted.affine[0, 3] += 1.0
    put("shifted_label.nii.gz", shifted)
    _two_dicom_series(image, root / "two_series")
    for name in ("4d.nii.gz", "empty.nii.gz", "corrupt.nii.gz", "notnifti.nii.gz", "two_series", "false_header.nii.gz"):
        k[name] = root / name
    k["missing.nii.gz"] = root / "missing.nii.gz"
    # datalists: one good case, then the bad one
    good = {"image": "good_image.nii.gz", "label": "good_label.nii.gz"}
    for bad in ("4d.nii.gz", "empty.nii.gz", "corrupt.nii.gz", "notnifti.nii.gz", "zeros.nii.gz", "nonhu.nii.gz",
                "two_series", "missing.nii.gz", "false_header.nii.gz"):
        _datalist(k, f"dl_image_{bad}", [good, {"image": bad, "label": "good2_label.nii.gz"}])
    for bad in ("float_label.nii.gz", "shifted_label.nii.gz", "missing.nii.gz"):
        _datalist(k, f"dl_label_{bad}", [good, {"image": "good2_image.nii.gz", "label": bad}])
    _datalist(k, "dl_good", [good, {"image": "good2_image.nii.gz", "label": "good2_label.nii.gz"}])
    # a case with a few liver tumours (realism --reader cnn: far fewer than 20 lesions)
    t_image, t_label = make_case("abdomen", seed=6, tumour=True, shape=SHAPE)
    put("tumour_image.nii.gz", t_image)
    put("tumour_label.nii.gz", t_label)
    _datalist(k, "dl_tumour", [{"image": "tumour_image.nii.gz", "label": "tumour_label.nii.gz"}])
    # configs
    (root / "empty.yaml").write_text("# nothing set\n")
    (root / "list.yaml").write_text("- organ: liver\n")
    k["empty.yaml"], k["list.yaml"] = root / "empty.yaml", root / "list.yaml"
    # a synthetic-case folder as `synthesize` leaves it (turing build reads its records)
    syn = root / "synthetic"
    syn.mkdir()
    (syn / "s_image.nii.gz").write_bytes((root / "good_image.nii.gz").read_bytes())
    (syn / "s.json").write_text(json.dumps({"organ": "liver", "outputs": {"image": "s_image.nii.gz"},
                                            "lesions": [{"index": 1, "centre_voxel": [28, 24, 12]}]}))
    k["synthetic"] = syn
    # output paths: a plain file, a folder no one may write
    (root / "a_file").write_text("x")
    k["a_file"] = root / "a_file"
    locked = root / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    k["locked"] = locked
    os.mkfifo(root / "a_fifo")  # a special file an output must never replace (as /dev/null would be, run as root)
    k["a_fifo"] = root / "a_fifo"
    k["dummy.pt"] = never_loaded_checkpoint(root / "dummy.pt")  # every row fails before a network is loaded
    for p in root.rglob("*"):
        if p.is_file():
            p.chmod(0o444)  # a command that modified an input would fail loudly
    return k


def _datalist(k: dict, name: str, entries: list[dict]) -> None:
    path = k["root"] / f"{name}.json"
    path.write_text(json.dumps({"label_map": "abdomen7", "training": entries}))
    k[name] = path


def _two_dicom_series(image, folder: Path) -> None:
    """Two DICOM series in one folder. SimpleITK's DICOM writer (GDCM) switches the process locale to "C",
    which makes every later ``subprocess.run(text=True)`` in this test process decode as ASCII: restored."""
    import locale

    saved = locale.setlocale(locale.LC_ALL)
    try:
        _write_two_dicom_series(image, folder)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_two_dicom_series(image, folder: Path) -> None:
    import SimpleITK as sitk

    folder.mkdir()
    arr = np.ascontiguousarray(image.array[:, :, :4].transpose(2, 1, 0))
    for s in range(2):
        uid = f"1.2.826.0.1.3680043.2.1125.{s + 1}"
        for z in range(arr.shape[0]):
            sl = sitk.GetImageFromArray(arr[z])
            for tag, value in (("0020|000e", uid), ("0020|0013", str(z + 1)), ("0008|0060", "CT"),
                               ("0020|0032", f"0\\0\\{2.5 * z}"), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                               ("0010|0020", "contract")):
                sl.SetMetaData(tag, value)
            sitk.WriteImage(sl, str(folder / f"s{s}_{z:02d}.dcm"))


# ----------------------------------------------------------------------------- the catalogue
@dataclass(frozen=True)
class Row:
    command: str
    bad: str                              # what is wrong (the test id)
    argv: Callable[[dict, Path], list]    # (kit, out) -> the command line after `freetumor`
    names: Callable[[dict], str]          # (kit) -> what the error line must name
    slow: bool = False


def _train_seg(dl="dl_good", config="liver-cpu-tiny", *extra):
    return lambda k, out: ["train-seg", "--config", k.get(config, config), "--datalist", k[dl], "--out", out,
                           "--max-steps", 1, *extra]


def _train_synth(dl="dl_good", config="liver-cpu-tiny", *extra):
    return lambda k, out: ["train-synth", "--config", k.get(config, config), "--datalist", k[dl],
                           "--segmentor", k["dummy.pt"], "--out", out, "--max-steps", 1, *extra]


def _batch(dl="dl_good", *extra):
    return lambda k, out: ["synthesize-batch", "--datalist", k[dl], "--organ", "liver", "--out", out,
                           "--workers", 0, *extra]


def _turing(dl="dl_good", *extra):
    return lambda k, out: ["turing", "build", "--real", k[dl], "--synthetic", k["synthetic"], "--out", out, *extra]


def _predict(image="good_image.nii.gz"):
    return lambda k, out: ["predict", "--model", k["dummy.pt"], "--image", k[image], "--out", out]


def _realism(dl="dl_good", *extra):
    return lambda k, out: ["realism", "--real", k[dl], "--synthetic", k["synthetic"], "--out", out, *extra]


def _export(dl="dl_good", *extra):
    return lambda k, out: ["export-nnunet", "--datalist", k[dl], "--out", out.parent / "Dataset001_Out",
                           "--organ", "liver", *extra]


def _lesions_fit(dl="dl_good", *extra):
    return lambda k, out: ["lesions", "fit", "--datalist", k[dl], "--organ", "liver",
                           "--out", out.parent / "profile.json", *extra]


def _organs(image="good_image.nii.gz"):
    return lambda k, out: ["organs", "--image", k[image], "--out", out, "--engine", "threshold"]


def _synthesize(image="good_image.nii.gz", label="good_label.nii.gz", *extra):
    return lambda k, out: ["synthesize", "--image", k[image], "--label", k[label], "--organ", "liver",
                           "--out", out, "--no-png", *extra]


def _evaluate(pred="float_label.nii.gz"):
    """evaluate with one prediction file (named as the ground truth's case) against good_label."""
    def argv(k, out):
        folder = out.parent / "preds"
        folder.mkdir(exist_ok=True)
        (folder / "good_image.nii.gz").symlink_to(k[pred])
        return ["evaluate", "--pred", folder, "--gt", k["dl_one_case"], "--organ", "liver", "--out", out]
    return argv


def _file(name):
    return lambda k: str(k[name])


def _with_out(maker, where):
    """The command with --out replaced by an impossible path."""
    def argv(k, out):
        line = maker(k, out)
        i = line.index("--out")
        return [*line[: i + 1], where(k), *line[i + 2:]]
    return argv


DATALIST_COMMANDS = {"train-seg": (_train_seg, True), "train-synth": (_train_synth, True),
                     "synthesize-batch": (_batch, False), "turing build": (_turing, False)}
BAD_IMAGES = ["4d.nii.gz", "empty.nii.gz", "corrupt.nii.gz", "notnifti.nii.gz", "zeros.nii.gz", "nonhu.nii.gz",
              "two_series", "missing.nii.gz"]
BAD_LABELS = ["float_label.nii.gz", "shifted_label.nii.gz", "missing.nii.gz"]
# the commands that also check every case up front, whose --out is checked as the others' (not repeated here)
CHECKED_COMMANDS = {"realism": _realism, "export-nnunet": _export, "lesions fit": _lesions_fit}
# fast rows: one of each kind per command, where the command starts without PyTorch
FAST = {("synthesize-batch", "4d.nii.gz"), ("synthesize-batch", "shifted_label.nii.gz"),
        ("turing build", "zeros.nii.gz"), ("turing build", "float_label.nii.gz"),
        ("turing build", "two_series"), ("export-nnunet", "notnifti.nii.gz")}

# every writing command: --out a FIFO (a special file) or empty
OUT_COMMANDS = {"train-seg": _train_seg(), "train-synth": _train_synth(), "synthesize-batch": _batch(),
                "turing build": _turing(), "synthesize": _synthesize(), "predict": _predict(), "realism": _realism(),
                "export-nnunet": _export(), "lesions fit": _lesions_fit(), "organs": _organs(),
                "evaluate": _evaluate("good_label.nii.gz")}

ROWS: list[Row] = []
for cmd, (maker, torch_start) in DATALIST_COMMANDS.items():
    ROWS += [Row(cmd, f"image {b}", maker(f"dl_image_{b}"), _file(b), slow=(cmd, b) not in FAST) for b in BAD_IMAGES]
    ROWS += [Row(cmd, f"label {b}", maker(f"dl_label_{b}"), _file(b), slow=(cmd, b) not in FAST) for b in BAD_LABELS]
    ROWS += [Row(cmd, "--out under a file", _with_out(maker(), lambda k: k["a_file"] / "out"), _file("a_file"),
                 slow=torch_start),
             Row(cmd, "--out is a file", _with_out(maker(), lambda k: k["a_file"]), _file("a_file"), slow=True),
             Row(cmd, "--out not writable", _with_out(maker(), lambda k: k["locked"] / "out"), _file("locked"),
                 slow=torch_start),
             Row(cmd, "--out on /proc", _with_out(maker(), lambda k: PROC_OUT), lambda k: str(PROC_OUT), slow=True)]
for cmd, maker in CHECKED_COMMANDS.items():
    ROWS += [Row(cmd, f"image {b}", maker(f"dl_image_{b}"), _file(b), slow=(cmd, b) not in FAST) for b in BAD_IMAGES]
    ROWS += [Row(cmd, f"label {b}", maker(f"dl_label_{b}"), _file(b), slow=(cmd, b) not in FAST) for b in BAD_LABELS]
ROWS += [
    *[Row("organs", f"image {b}", _organs(b), _file(b), slow=True) for b in [*BAD_IMAGES, "labelmap_as_image.nii.gz"]],
    Row("export-nnunet", "--out under a file", _with_out(_export(), lambda k: k["a_file"] / "Dataset001_Out"),
        _file("a_file"), slow=True),
    Row("lesions fit", "--out under a file", _with_out(_lesions_fit(), lambda k: k["a_file"] / "profile.json"),
        _file("a_file"), slow=True),
    Row("realism", "--out on /proc", _with_out(_realism(), lambda k: PROC_OUT), lambda k: str(PROC_OUT), slow=True),
    Row("realism", "--reader cnn with fewer than 20 lesions per side",
        lambda k, out: ["realism", "--real", k["dl_tumour"], "--synthetic", k["dl_tumour"], "--out", out,
                        "--reader", "cnn"],
        lambda k: "--reader cnn needs at least 20 lesions per side, got 1 real and 1 synthetic"),
    Row("train-seg", "empty config", _train_seg(config="empty.yaml"), _file("empty.yaml")),
    Row("train-seg", "config not a mapping", _train_seg(config="list.yaml"), _file("list.yaml")),
    Row("train-synth", "empty config", _train_synth(config="empty.yaml"), _file("empty.yaml")),
    Row("train-seg", "negative seed", _train_seg("dl_good", "liver-cpu-tiny", "--set", "train.seed=-1"),
        lambda k: "train.seed"),
    Row("train-seg", "seed >= 2**63", _train_seg("dl_good", "liver-cpu-tiny", "--set", f"train.seed={2**63}"),
        lambda k: "train.seed"),
    Row("train-synth", "negative seed", _train_synth("dl_good", "liver-cpu-tiny", "--set", "train.seed=-1"),
        lambda k: "train.seed"),
    Row("synthesize-batch", "negative seed", _batch("dl_good", "--seed", -1), lambda k: "--seed"),
    Row("turing build", "seed >= 2**64", _turing("dl_good", "--seed", 2**64), lambda k: "--seed"),
    Row("synthesize", "negative seed", _synthesize("good_image.nii.gz", "good_label.nii.gz", "--seed", -1),
        lambda k: "--seed"),
    Row("synthesize", "--out under a file", _with_out(_synthesize(), lambda k: k["a_file"] / "o"), _file("a_file")),
    Row("synthesize", "--out not writable", _with_out(_synthesize(), lambda k: k["locked"] / "o"), _file("locked"),
        slow=True),
    Row("synthesize", "--out on /proc", _with_out(_synthesize(), lambda k: PROC_OUT), lambda k: str(PROC_OUT)),
    *[Row("synthesize", f"image {b}", _synthesize(b), _file(b), slow=b not in ("4d.nii.gz", "nonhu.nii.gz"))
      for b in BAD_IMAGES],
    *[Row("synthesize", f"label {b}", _synthesize(label=b), _file(b), slow=True) for b in BAD_LABELS],
    *[Row("predict", f"image {b}", _predict(b), _file(b), slow=b != "labelmap_as_image.nii.gz")
      for b in [*BAD_IMAGES, "labelmap_as_image.nii.gz"]],
    Row("predict", "--out is a file", _with_out(_predict(), lambda k: k["a_file"]), _file("a_file"), slow=True),
    *[Row(cmd, "--out is a FIFO", _with_out(maker, lambda k: k["a_fifo"]), _file("a_fifo"), slow=cmd != "lesions fit")
      for cmd, maker in OUT_COMMANDS.items()],
    *[Row(cmd, "--out ''", _with_out(maker, lambda k: ""), lambda k: "--out: empty output path",
          slow=cmd != "predict") for cmd, maker in OUT_COMMANDS.items()],
    Row("synthesize", "image header claims 30000^3 voxels", _synthesize("false_header.nii.gz"),
        _file("false_header.nii.gz")),
    Row("synthesize-batch", "image header claims 30000^3 voxels", _batch("dl_image_false_header.nii.gz"),
        _file("false_header.nii.gz"), slow=True),
    Row("train-seg", "image header claims 30000^3 voxels", _train_seg("dl_image_false_header.nii.gz"),
        _file("false_header.nii.gz"), slow=True),
    Row("predict", "image header claims 30000^3 voxels", _predict("false_header.nii.gz"),
        _file("false_header.nii.gz"), slow=True),
    Row("evaluate", "non-integer prediction", _evaluate("float_label.nii.gz"), lambda k: "preds/good_image.nii.gz",
        slow=True),
]


# ----------------------------------------------------------------------------- issue 25, items 3 and 4
# Nothing partial and no silent wrongs: run-level options checked before the run folder, duplicate
# cases, values outside the label map, a synthetic label off its image's grid, unbounded phantom
# options, air that is not lungs, a lesion that fills its image. (Made on first use: the kit above
# stays as it was.)
def _issue25_kit(k: dict) -> dict:
    if "dl_duplicate" in k:
        return k
    root = k["root"] / "issue25"
    root.mkdir()
    image = nib.load(k["good_image.nii.gz"])
    good = {"image": "../good_image.nii.gz", "label": "../good_label.nii.gz"}
    for name, entries in (("dl_duplicate", [good, good]),
                          ("dl_duplicate_across_lists", None)):
        path = root / f"{name}.json"
        body = {"label_map": "abdomen7", "training": [good]}
        body.update({"training": entries} if entries else {"validation": [good]})
        path.write_text(json.dumps(body))
        k[name] = path
    lab = np.asarray(nib.load(k["good_label.nii.gz"]).dataobj).astype(np.int16)
    lab[0, 0, 0], lab[1, 0, 0] = -1, 9
    nib.save(nib.Nifti1Image(lab, image.affine), root / "pred_out_of_map.nii.gz")
    k["pred_out_of_map.nii.gz"] = root / "pred_out_of_map.nii.gz"
    syn = root / "synthetic_badlabel"
    syn.mkdir()
    (syn / "s_image.nii.gz").write_bytes(k["good_image.nii.gz"].read_bytes())
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), image.affine), syn / "s_label.nii.gz")
    (syn / "s.json").write_text(json.dumps({"organ": "liver", "outputs": {"image": "s_image.nii.gz",
                                                                         "label": "s_label.nii.gz"},
                                            "lesions": [{"index": 1, "centre_voxel": [28, 24, 12]}]}))
    k["synthetic_badlabel"], k["s_label.nii.gz"] = syn, syn / "s_label.nii.gz"
    gas = np.full((40, 30, 40), -1000, np.int16)  # a body with two lungs and a pocket of bowel gas
    gas[3:37, 3:27, :] = 40
    gas[6:18, 8:22, 20:38] = gas[22:34, 8:22, 20:38] = -850
    gas[12:28, 8:22, 4:14] = -1000
    nib.save(nib.Nifti1Image(gas, np.diag([5.0, 5.0, 5.0, 1.0])), root / "bowel_gas_ct.nii.gz")
    k["bowel_gas_ct.nii.gz"] = root / "bowel_gas_ct.nii.gz"
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.integers(-100, 150, (12, 12, 12)).astype(np.int16), np.eye(4)),
             root / "filled_image.nii.gz")
    nib.save(nib.Nifti1Image(np.full((12, 12, 12), 2, np.uint8), np.eye(4)), root / "filled_label.nii.gz")
    k["filled_label.nii.gz"] = root / "filled_label.nii.gz"
    (root / "dl_filled.json").write_text(json.dumps({"label_map": "abdomen7", "training": [
        {"image": "filled_image.nii.gz", "label": "filled_label.nii.gz"}]}))
    k["dl_filled"] = root / "dl_filled.json"
    for p in root.rglob("*"):
        if p.is_file():
            p.chmod(0o444)
    return k


ISSUE25_ROWS = [  # all slow: the fast set is full (see test_catalogue_covers_every_command_and_input_kind)
    Row("data check", "duplicate case", lambda k, out: ["data", "check", k["dl_duplicate"]], _file("dl_duplicate")),
    Row("data check", "duplicate case in two lists", lambda k, out: ["data", "check", k["dl_duplicate_across_lists"]],
        _file("dl_duplicate_across_lists")),
    Row("synthesize-batch", "duplicate case", _batch("dl_duplicate"), _file("dl_duplicate")),
    Row("turing build", "duplicate case", _turing("dl_duplicate"), _file("dl_duplicate")),
    Row("train-seg", "duplicate case", _train_seg("dl_duplicate"), _file("dl_duplicate"), slow=True),
    Row("evaluate", "prediction values -1 and 9", _evaluate("pred_out_of_map.nii.gz"),
        lambda k: "prediction values -1, 9 are not in label map", slow=True),
    Row("turing build", "synthetic label shape differs from its image",
        lambda k, out: ["turing", "build", "--real", k["dl_good"], "--synthetic", k["synthetic_badlabel"],
                        "--out", out], _file("s_label.nii.gz")),
    Row("phantom", "--tumour-radius-mm 1 1e6", lambda k, out: ["phantom", "--out", out, "--cases", 1,
                                                               "--tumour-radius-mm", 1, 1e6],
        lambda k: "--tumour-radius-mm"),
    Row("phantom", "--cases 10**9", lambda k, out: ["phantom", "--out", out, "--cases", 10**9], lambda k: "--cases"),
    Row("organs", "threshold engine on bowel gas", _organs("bowel_gas_ct.nii.gz"), _file("bowel_gas_ct.nii.gz"),
        slow=True),
    Row("lesions fit", "lesion fills its image", _lesions_fit("dl_filled"), _file("filled_label.nii.gz"), slow=True),
    Row("synthesize-batch", "--profile of another organ", _batch("dl_good", "--profile", "builtin:lung"),
        lambda k: "builtin:lung: lesion profile is for lung, not liver"),
    Row("synthesize-batch", "--generator missing", _batch("dl_good", "--generator", "missing.pt"),
        lambda k: "missing.pt: checkpoint not found", slow=True),
    Row("train-seg", "--generator missing", _train_seg("dl_good", "liver-cpu-tiny", "--synthesis", "generator",
                                                       "--generator", "missing.pt"),
        lambda k: "missing.pt: checkpoint not found", slow=True),
    Row("train-seg", "--profile of another organ", _train_seg("dl_good", "liver-cpu-tiny", "--synthesis", "profile",
                                                              "--profile", "builtin:lung"),
        lambda k: "builtin:lung: lesion profile is for lung, not liver", slow=True),
]
ISSUE25_ROWS = [r if r.slow else Row(r.command, r.bad, r.argv, r.names, slow=True) for r in ISSUE25_ROWS]
ROWS += ISSUE25_ROWS
# ----------------------------------------------------------------------------- end of issue 25's rows

# ----------------------------------------------------------------------------- issue 25, items 2 and 5 (begin)
# Bounded inputs (JSON/YAML size and depth, --count / --per-case, profile values) and messages
# (--model text file, --device, --port, --ray-address, a name too long, a bad record, a binary
# metrics.csv). Each row makes its bad file in the work folder (under ``inputs/``) when it builds its
# command line, before the test takes its snapshot of that folder.
def _inputs(out: Path) -> Path:
    folder = out.parent / "inputs"
    folder.mkdir(exist_ok=True)
    return folder


def _put(out: Path, name: str, content) -> Path:
    path = _inputs(out) / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(json.dumps(content))  # NaN is written as JSON's NaN, as Python's json reads it
    return path


def _builtin_doc(name: str) -> dict:
    from freetumor.lesions.profile import BUILTIN_DIR

    return json.loads((BUILTIN_DIR / f"{name}.json").read_text())


def _literature(feature: str, **spec) -> dict:
    doc = _builtin_doc("liver-literature")
    doc["distributions"][feature] = {**doc["distributions"][feature], **spec}
    return doc


def _fitted(**values) -> dict:
    """builtin:liver's measured rows as a fitted liver profile, its first row edited."""
    from freetumor.lesions.profile import FEATURE_ORDER

    doc = {k: v for k, v in _builtin_doc("liver").items() if k != "distributions"}
    doc["kind"] = "fitted"
    row = list(doc["rows"][0])
    for f, v in values.items():
        row = [v] * len(row) if f == "all" else [v if i == FEATURE_ORDER.index(f) else x for i, x in enumerate(row)]
    doc["rows"] = [row, *doc["rows"][1:]]
    return doc


BAD_PROFILES = {  # file -> (document, what the error names after the file)
    "neg_sd.json": (_literature("contrast_hu", sd=-18.0), "distributions.contrast_hu.sd"),
    "neg_sigma.json": (_literature("diameter_mm", sigma=-0.75), "distributions.diameter_mm.sigma"),
    "median0.json": (_literature("diameter_mm", median=0), "distributions.diameter_mm.median"),
    "low_above_high.json": (_literature("axis_ratio_mid", dist="uniform", low=0.9, high=0.5),
                            "distributions.axis_ratio_mid.low"),
    "contrast_1e12.json": (_literature("contrast_hu", mean=1e12), "distributions.contrast_hu.mean"),
    "row_of_zeros.json": (_fitted(all=0.0), "diameter_mm of row 1"),
    "nan_diameter.json": (_fitted(diameter_mm=float("nan")), "diameter_mm of row 1 must be a finite number"),
    "negative_diameter.json": (_fitted(diameter_mm=-8.0), "diameter_mm of row 1 is -8"),
    "diameter_1e6.json": (_fitted(diameter_mm=1e6), "diameter_mm of row 1 is 1e+06"),
    "row_contrast_1e12.json": (_fitted(contrast_hu=1e12), "contrast_hu of row 1"),
    "all_1e308.json": (_fitted(all=1e308), "diameter_mm of row 1"),
}
DEEP_JSON = "[" * 5000 + "]" * 5000
LONG_NAME = "a" * 300


def _bad_file(maker, option: str, name: str, content):
    """``maker``'s command with ``option`` given a bad file made in the work folder."""
    def argv(k, out):
        line = maker(k, out)
        path = _put(out, name, content)
        return [*line, option, path]
    return argv


def _sparse(name: str, size: int):
    """A file of ``size`` bytes that takes no disk (a size cap must refuse it before reading)."""
    def make(out: Path) -> Path:
        path = _inputs(out) / name
        with open(path, "wb") as fh:
            fh.truncate(size)
        return path
    return make


def _compare_binary_metrics(k, out):
    a, b = _inputs(out) / "report_a", _inputs(out) / "report_b"
    a.mkdir()
    b.mkdir()
    (a / "metrics.csv").write_bytes(bytes(range(256)) * 8)
    (b / "metrics.csv").write_text("case,tumour_dice,tumour_nsd,organ_dice,organ_nsd\nc1,0.5,0.6,0.9,0.8\n")
    return ["compare", a, b, "--out", out]


def _record_folder(out: Path, deep: bool) -> Path:
    """A synthetic-case folder whose record says "tumour_id": "abc" (or is nested 5000 deep)."""
    syn = _inputs(out) / "synthetic_bad"
    syn.mkdir()
    (syn / "s_image.nii.gz").symlink_to(Path(__file__).resolve())  # never read: the record is refused first
    (syn / "s_label.nii.gz").symlink_to(Path(__file__).resolve())
    (syn / "s.json").write_text(DEEP_JSON if deep else json.dumps(
        {"case": "s", "organ": "liver", "tumour_id": "abc", "outputs": {"image": "s_image.nii.gz",
         "label": "s_label.nii.gz"}, "lesions": [{"index": 1, "centre_voxel": [28, 24, 12]}]}))
    return syn


def _with_synthetic(maker, deep: bool = False):
    def argv(k, out):
        line = maker(k, out)
        i = line.index("--synthetic")
        return [*line[: i + 1], _record_folder(out, deep), *line[i + 2:]]
    return argv


def _no_cuda_or_no_such_gpu(option: str, device: str):
    def names(k):
        import torch

        return f"{option} {device}: " + ("this machine has" if torch.cuda.is_available() else
                                         "no CUDA on this machine")
    return names


ROWS += [
    # JSON / YAML size and depth, before parsing
    Row("synthesize-batch", "datalist nested 5000 deep",
        lambda k, out: ["synthesize-batch", "--datalist", _put(out, "deep_dl.json", DEEP_JSON), "--organ", "liver",
                        "--out", out, "--workers", 0],
        lambda k: "deep_dl.json: datalist nested too deeply (5000 levels, the limit is 100)", slow=True),
    Row("synthesize-batch", "datalist of 65 MiB",
        lambda k, out: ["synthesize-batch", "--datalist", _sparse("huge_dl.json", 65 * 2**20)(out), "--organ",
                        "liver", "--out", out, "--workers", 0],
        lambda k: "huge_dl.json: datalist of 65 MiB is larger than the limit of 64 MiB", slow=True),
    Row("train-seg", "config nested 5000 deep",
        lambda k, out: _train_seg(config="deep")({**k, "deep": _put(out, "deep.yaml", DEEP_JSON)}, out),
        lambda k: "deep.yaml: config nested too deeply", slow=True),
    Row("synthesize", "label map nested 5000 deep", _bad_file(_synthesize(), "--label-map", "deep_lm.json", DEEP_JSON),
        lambda k: "deep_lm.json: label map nested too deeply", slow=True),
    Row("synthesize", "profile nested 5000 deep", _bad_file(_synthesize(), "--profile", "deep_profile.json", DEEP_JSON),
        lambda k: "deep_profile.json: lesion profile nested too deeply", slow=True),
    Row("turing build", "record nested 5000 deep", _with_synthetic(_turing(), deep=True),
        lambda k: "s.json: synthesis record nested too deeply", slow=True),
    # upper bounds of --count and --per-case
    Row("synthesize", "--count 10**12", _synthesize("good_image.nii.gz", "good_label.nii.gz", "--count", 10**12),
        lambda k: "--count 1000000000000 is above the limit of 1000 lesions per case", slow=True),
    Row("synthesize", "--count 2**70", _synthesize("good_image.nii.gz", "good_label.nii.gz", "--count", 2**70),
        lambda k: f"--count {2**70} is above the limit of 1000 lesions per case", slow=True),
    Row("synthesize-batch", "--count 10**12", _batch("dl_good", "--count", 10**12),
        lambda k: "--count 1000000000000 is above the limit", slow=True),
    Row("synthesize-batch", "--per-case 10**9", _batch("dl_good", "--per-case", 10**9),
        lambda k: "--per-case 1000000000 is above the limit of 10000 synthetic variants per case", slow=True),
    # profile values, range-checked at load, the file and the field named
    *[Row("synthesize", f"profile {name}", _bad_file(_synthesize(), "--profile", name, doc),
          (lambda want: lambda k: want)(f"{name}: {field}"), slow=True)
      for name, (doc, field) in BAD_PROFILES.items()],
    Row("synthesize-batch", "profile with a negative sigma",
        _bad_file(_batch(), "--profile", "neg_sigma.json", BAD_PROFILES["neg_sigma.json"][0]),
        lambda k: "neg_sigma.json: distributions.diameter_mm.sigma", slow=True),
    # messages
    Row("predict", "a text file as --model",
        lambda k, out: ["predict", "--model", _put(out, "model.pt", "epoch 3, loss 0.12\n"), "--image",
                        k["good_image.nii.gz"], "--out", out],
        lambda k: "model.pt: not a checkpoint (a text file", slow=True),
    Row("organs", "a text file as --model",
        lambda k, out: ["organs", "--model", _put(out, "seg.pt", "c__builtin__\neval\n"), "--image",
                        k["good_image.nii.gz"], "--out", out],
        lambda k: "seg.pt: not a checkpoint (a text file", slow=True),
    Row("predict", "--device cuda:99", lambda k, out: [*_predict()(k, out), "--device", "cuda:99"],
        _no_cuda_or_no_such_gpu("--device", "cuda:99"), slow=True),
    Row("predict", "--device bogus", lambda k, out: [*_predict()(k, out), "--device", "bogus"],
        lambda k: "--device 'bogus' is not a device", slow=True),
    Row("organs", "--device bogus",
        lambda k, out: ["organs", "--model", k["dummy.pt"], "--image", k["good_image.nii.gz"], "--out", out,
                        "--device", "bogus"],
        lambda k: "--device 'bogus' is not a device", slow=True),
    Row("synthesize", "--device bogus", _synthesize("good_image.nii.gz", "good_label.nii.gz", "--device", "bogus"),
        lambda k: "--device 'bogus' is not a device", slow=True),
    Row("turing serve", "--port 70000", lambda k, out: ["turing", "serve", out.parent, "--port", 70000],
        lambda k: "--port 70000 is not a TCP port", slow=True),
    Row("synthesize-batch", "unreachable --ray-address",
        lambda k, out: ["synthesize-batch", "--datalist", k["dl_good"], "--organ", "liver", "--out", out,
                        "--ray-address", "127.0.0.1:1", "--quiet"],
        lambda k: "--ray-address 127.0.0.1:1: cannot connect to a Ray cluster there", slow=True),
    *[Row(cmd, "--out name of 300 characters", _with_out(maker, lambda k: LONG_NAME), lambda k: "is 300 bytes long",
          slow=True) for cmd, maker in (("synthesize", _synthesize()), ("synthesize-batch", _batch()),
                                        ("evaluate", _evaluate("good_label.nii.gz")))],
    Row("lesions fit", "--out name of 300 characters", _with_out(_lesions_fit(), lambda k: LONG_NAME + ".json"),
        lambda k: "is 305 bytes long", slow=True),
    Row("realism", 'record with "tumour_id": "abc"', _with_synthetic(_realism()),
        lambda k: "s.json: record field \"tumour_id\" must be an integer label id in 1..65535, got 'abc'", slow=True),
    Row("turing build", 'record with "tumour_id": "abc"', _with_synthetic(_turing()),
        lambda k: "s.json: record field \"tumour_id\" must be an integer", slow=True),
    Row("compare", "a binary metrics.csv", _compare_binary_metrics,
        lambda k: "report_a/metrics.csv: not a readable report table: not UTF-8 text", slow=True),
]
# ----------------------------------------------------------------------------- issue 25, items 2 and 5 (end)

def _rid(row: Row) -> str:
    return f"{row.command}: {row.bad}"


def _params():
    return [pytest.param(r, id=_rid(r), marks=[pytest.mark.slow] if r.slow else []) for r in ROWS]


# ----------------------------------------------------------------------------- the contract
def _tree(path: Path) -> dict:
    """Every file and folder under ``path`` (hidden ones too) with its size and mtime."""
    out = {}
    for p in sorted(path.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(path))] = (p.is_dir(), st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.parametrize("row", _params())
def test_bad_input_one_line_exit_1_nothing_written(kit, row, tmp_path):
    if "not writable" in row.bad and os.geteuid() == 0:
        pytest.skip("running as root: a folder without write permission is still writable (see the /proc rows)")
    if "/proc" in row.bad and not Path("/proc/self").is_dir():
        pytest.skip("no /proc file system here")
    if row in ISSUE25_ROWS:
        _issue25_kit(kit)
    if row.command == "evaluate" and "dl_one_case" not in kit:
        _datalist(kit, "dl_one_case", [{"image": "good_image.nii.gz", "label": "good_label.nii.gz"}])
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    argv = [str(a) for a in row.argv(kit, out)]
    before_kit, before_work = _tree(kit["root"]), _tree(work)
    env = dict(os.environ, COLUMNS="200")
    r = subprocess.run([*CLI, *argv], capture_output=True, text=True, encoding="utf-8", errors="replace", env=env,
                       timeout=300, cwd=work)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    context = f"\n$ freetumor {' '.join(argv)}\nstdout: {r.stdout[-800:]}\nstderr: {r.stderr[-2000:]}"
    assert r.returncode == 1, context
    assert "Traceback" not in r.stderr + r.stdout, context
    assert len(errors) == 1, context
    assert row.names(kit) in errors[0], context
    assert _tree(work) == before_work, "something was written" + context
    assert _tree(kit["root"]) == before_kit, "an input or its folder changed" + context


def test_catalogue_covers_every_command_and_input_kind():
    """The catalogue keeps its breadth: each command the issue names, each kind of bad input."""
    commands = {r.command for r in ROWS}
    assert {"train-seg", "train-synth", "synthesize-batch", "turing build", "predict", "synthesize",
            "evaluate", "realism", "export-nnunet", "lesions fit", "organs"} <= commands
    for cmd in ("train-seg", "train-synth", "synthesize-batch", "turing build", "realism", "export-nnunet",
                "lesions fit"):
        kinds = {r.bad for r in ROWS if r.command == cmd}
        assert {f"image {b}" for b in BAD_IMAGES} | {f"label {b}" for b in BAD_LABELS} <= kinds
        if cmd in DATALIST_COMMANDS:
            assert {"--out under a file", "--out is a file", "--out not writable", "--out on /proc"} <= kinds
    for cmd in ("predict", "organs"):
        assert {f"image {b}" for b in BAD_IMAGES} <= {r.bad for r in ROWS if r.command == cmd}
    assert len({_rid(r) for r in ROWS}) == len(ROWS)
    for cmd in OUT_COMMANDS:
        assert {"--out is a FIFO", "--out ''"} <= {r.bad for r in ROWS if r.command == cmd}
    assert 8 <= sum(not r.slow for r in ROWS) <= 28  # the fast set stays well under a minute


@pytest.mark.parametrize("maker,done", [(_turing, None), (_export, "wrote 1 case(s)")],
                         ids=["turing build", "export-nnunet"])
def test_skip_bad_cases_says_how_many_and_goes_on(kit, tmp_path, maker, done):
    """--skip-bad-cases leaves the bad case out, says so, and the command runs on the good ones
    (turing build then finds the kit's one real case too few for a study: no ``done`` check)."""
    from conftest import run_cli

    argv = maker("dl_image_zeros.nii.gz", "--skip-bad-cases")(kit, tmp_path / "study")
    r = run_cli(*argv, timeout=300)
    assert "skipped 1 bad case(s) of 2" in r.stdout, r.stdout + r.stderr
    assert "zeros.nii.gz" in r.stdout
    assert "Traceback" not in r.stderr
    if done is not None:
        assert r.returncode == 0 and done in r.stdout, r.stdout + r.stderr
