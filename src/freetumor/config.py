"""Training configuration: typed sections, read from a YAML file or a named preset.

A config is a frozen :class:`Config` of typed sections (:class:`DataConfig`,
:class:`ModelConfig`, :class:`TrainConfig`, :class:`ValConfig`,
:class:`SynthConfig`, :class:`QCConfig`). Every default is the field default of
its dataclass, and nowhere else; :data:`DEFAULTS` is the same tree as a plain
dict (what a YAML file may contain). Presets live in the package's ``configs/``
folder (``freetumor.configs``); :func:`load_config` accepts a YAML path or a
preset name (``liver-paper``, ``liver-cpu-tiny.yaml``).

Rules:

* the YAML is deep-merged over :data:`DEFAULTS`; a key that is not in the schema
  is a :class:`~freetumor.errors.ConfigError` naming the key path;
* each value must have the default's type (``float`` accepts ``int``; ``None``
  defaults accept anything and are checked afterwards);
* ``overrides`` are ``"a.b=value"`` strings, the value parsed as YAML
  (``1e-3`` is a float here, as in YAML 1.2);
* ``data.spacing``, ``data.hu_window`` and ``data.roi_size`` left ``null`` are
  filled from the organ registry; ``name`` left ``null`` becomes the file stem;
* values are validated once, by each section's ``checked`` method, when the
  config is built; a section changed later (``dataclasses.replace``) is
  re-checked with the same method (e.g. ``synthesize --qc-threshold``).

``label_map`` stays ``null`` when not given: ``freetumor.labels.get_label_map(None, organ)``
then picks ``abdomen7`` or ``chest3``. Configs are stored (``config.yaml``, inside
checkpoints) as :meth:`Config.to_dict`, and read back with :func:`resolve_config`.

Example:
    >>> cfg = load_config("liver-cpu-tiny", ["train.lr=1e-3", "data.num_samples=1"])
    >>> cfg.name, cfg.model.name, cfg.train.lr, cfg.data.spacing
    ('liver-cpu-tiny', 'unet', 0.001, [3.0, 3.0, 3.0])
    >>> cfg.num_classes, cfg.tumour_classes
    (3, (2,))
    >>> load_config("liver-cpu-tiny", ["train.max_stepz=3"])
    Traceback (most recent call last):
    ...
    freetumor.errors.ConfigError: unknown config key 'train.max_stepz' in override 'train.max_stepz=3' (did you mean 'train.max_steps'?)
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from .errors import ConfigError, InputError
from .io import write_bytes_atomic
from .labels import PRESET_NAMES, PRESETS
from .organs import ORGAN_NAMES, SIZE_CHOICES, Organ, get_organ
from .structured import check_yaml_text, read_text_bounded
from .tasks import TASKS, num_classes, organ_classes, tumour_classes

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

MODEL_NAMES = ("swinunetr", "unet", "dynunet")
NORMS = ("instance", "batch")
CONTEXTS = ("bbox", "patch")
QC_CONTEXTS = ("bbox", "fit", "patch")  # what the QC segmentor sees around a lesion (qc.context)
DEVICE_RE = re.compile(r"cpu|cuda(:[0-9]+)?|mps")  # torch device names a setting may give


# Seeds: every generator (NumPy's legacy and new ones, torch's) takes these, and seeds derived
# from them (per case, per step) stay valid.
SEED_MAX = 2**32 - 1

# --------------------------------------------------------------------------- checks


def check_seed(seed: Any, what: str = "--seed") -> int:
    """The seed, or a :class:`ConfigError` when it is not an integer in ``0..SEED_MAX``.

    Example:
        >>> check_seed(7)
        7
        >>> check_seed(-1)
        Traceback (most recent call last):
        ...
        freetumor.errors.ConfigError: --seed must be an integer in 0..4294967295, got -1
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"{what} must be an integer in 0..{SEED_MAX}, got {seed!r}")
    return int(seed)


def _not_a_checkpoint(path: str) -> str | None:
    """What the file is when its first bytes show it is no PyTorch file at all (an empty file, a
    text file, another format), else ``None``. ``torch.save`` writes a zip archive (``PK\\3\\4``);
    the legacy format and plain pickles start with the PROTO opcode (``\\x80``). Text fed to the
    unpickler would otherwise read as opcodes and be blamed as "pickled Python code"."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return None  # torch.load reports it
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return None
    if not head:
        return "an empty file"
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError as exc:
        return "a text file" if exc.start >= len(head) - 3 else "another kind of file"


def check_checkpoint_file(path: str | os.PathLike) -> Path:
    """``path`` if it could be a checkpoint (it exists, is a file, and starts like a PyTorch file),
    else a one-line :class:`InputError` naming it. Reads 512 bytes and needs no PyTorch, so the
    CLI refuses a wrong ``--model`` or ``--generator`` before the networks load;
    :func:`freetumor.checkpoints.load_checkpoint` then checks what is inside.

    Example:
        >>> try:
        ...     check_checkpoint_file("no/such/best.pt")
        ... except InputError as exc:
        ...     print(exc)
        no/such/best.pt: checkpoint not found
    """
    p = str(path)
    if not os.path.exists(p):
        raise InputError(p, "checkpoint not found")
    if os.path.isdir(p):
        raise InputError(p, "is a folder, not a checkpoint file")
    not_ours = _not_a_checkpoint(p)
    if not_ours:
        raise InputError(p, f"not a checkpoint ({not_ours}; a checkpoint is a PyTorch file such as RUNDIR/best.pt)")
    return Path(p)


def check_device(device: str | None, option: str = "--device") -> str | None:
    """A device the networks can run on, else a one-line :class:`ConfigError` naming ``option``:
    not a device name (``bogus``), CUDA asked on a machine without it, a GPU index past the last.
    ``None`` (the command's default) passes.

    Example:
        >>> check_device("cpu"), check_device(None)
        ('cpu', None)
        >>> try:
        ...     check_device("bogus")
        ... except ConfigError as exc:
        ...     print(exc)
        --device 'bogus' is not a device; use cpu, cuda, cuda:N or mps
    """
    if device is None:
        return None
    if not isinstance(device, str) or not DEVICE_RE.fullmatch(device):
        raise ConfigError(f"{option} {device!r} is not a device; use cpu, cuda, cuda:N or mps")
    if device == "cpu":
        return device
    import torch  # deferred: only a GPU device name needs PyTorch (a bad name or cpu is refused or passed without it)

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{option} {device}: no CUDA on this machine (PyTorch sees no GPU); use {option} cpu")
        n = torch.cuda.device_count()
        if ":" in device and int(device.split(":")[1]) >= n:
            raise ConfigError(f"{option} {device}: this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1}")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"{option} mps: no MPS (Apple GPU) on this machine; use {option} cpu")
    return device


def _numbers(cfg_key: str, value: Any, n: int, source: str, *, integer: bool = False, positive: bool = True) -> list:
    ok = isinstance(value, (list, tuple)) and len(value) == n and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in value)
    if ok and integer:
        ok = all(float(x).is_integer() for x in value)
    if ok and positive:
        ok = all(x > 0 for x in value)
    if not ok:
        kind = ("positive integers" if integer else "positive numbers") if positive else "numbers"
        raise ConfigError(f"config key {cfg_key!r} in {source} must be a list of {n} {kind}, got {value!r}")
    return [int(x) for x in value] if integer else [float(x) for x in value]


def _require(cond: bool, key: str, source: str, what: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"config key {key!r} in {source} must be {what}, got {value!r}")


def _int_list(key: str, value: Any, source: str, min_len: int) -> list[int]:
    ok = isinstance(value, (list, tuple)) and len(value) >= min_len and all(
        isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in value)
    _require(ok, key, source, f"a list of at least {min_len} positive integers", value)
    return [int(x) for x in value]


def dynunet_plan(roi_size: Sequence[int], levels: int) -> tuple[list[list[int]], list[list[int]]]:
    """Kernel sizes and strides for a DynUNet with ``levels`` resolution levels (one per filter).

    The first level has stride 1; each further level halves an axis while that axis
    stays divisible by 2 and at least 8 voxels (nnU-Net's rule), otherwise keeps it.

    Example:
        >>> dynunet_plan([96, 96, 16], 4)[1]
        [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 1]]
    """
    size = [int(s) for s in roi_size]
    strides = [[1, 1, 1]]
    for _ in range(levels - 1):
        st = [2 if s % 2 == 0 and s >= 8 else 1 for s in size]
        size = [s // k for s, k in zip(size, st)]
        strides.append(st)
    return [[3, 3, 3] for _ in range(levels)], strides


# --------------------------------------------------------------------------- sections


CROP_PLACEMENTS = ("auto", "centre", "random", "host")
HOST_PATCHES = ("organ", "any")


@dataclass(frozen=True)
class DataConfig:
    """Section ``data``: geometry, intensity window and patch sampling."""

    spacing: list[float] | None = None     # mm per voxel (R-L, A-P, S-I); null: the organ's target spacing
    hu_window: list[float] | None = None   # [a_min, a_max] HU scaled to [0, 1]; null: the organ's window
    roi_size: list[int] | None = None      # training patch in voxels; null: the organ's ROI
    num_samples: int = 4                   # patches per volume per step
    pos: float = 1.0                       # RandCropByPosNegLabeld foreground / background weights
    neg: float = 1.0
    scale_intensity: bool = True
    shift_intensity: bool = True
    flip_prob: float = 0.2
    rot90_prob: float = 0.2
    cache: bool = False
    num_workers: int | None = None          # data-loader workers; null: 1 when Stage 2's online synthesis runs
                                            # a network on the CPU (it then overlaps training), else 0
    labelled_repeat: int = 1               # labelled cases repeated against the unlabelled pool
    labelled_share: float | None = None    # Stage 2 with unlabelled cases: share of each step's samples drawn
                                           # from the labelled cases (null: uniform over the pooled cases; 1.0:
                                           # labelled only, the hosts serve as crop_placement: host context)
    crop_placement: str = "auto"           # labelled cases smaller than the patch: centre (padded in the middle),
                                           # random (a random offset in an air canvas), auto (random when smaller),
                                           # host (pasted into a healthy host's organ; random without hosts)
    canvas_scale: float = 1.5              # random placement: canvas = roi_size x this (at least the case)
    host_patches: str = "organ"            # unlabelled (host) cases: patches centred in the task's organ (organ)
                                           # or on any voxel as labelled cases (any)
    synth_margin: int = 1                  # synthetic lesions keep this many voxels from padding / the scan's edge

    def checked(self, source: str, organ: Organ) -> "DataConfig":
        hw = _numbers("data.hu_window", list(organ.hu_window) if self.hu_window is None else self.hu_window,
                      2, source, positive=False)
        _require(hw[0] < hw[1], "data.hu_window", source, "[a_min, a_max] with a_min < a_max", hw)
        _require(self.num_samples >= 1, "data.num_samples", source, "at least 1", self.num_samples)
        for k in ("pos", "neg"):
            _require(getattr(self, k) >= 0, f"data.{k}", source, "zero or more", getattr(self, k))
        _require(self.pos + self.neg > 0, "data.pos", source, "positive when data.neg is 0", self.pos)
        for k in ("flip_prob", "rot90_prob"):
            _require(0.0 <= getattr(self, k) <= 1.0, f"data.{k}", source, "a probability in [0, 1]", getattr(self, k))
        _require(self.num_workers is None or (isinstance(self.num_workers, int) and not isinstance(
            self.num_workers, bool) and self.num_workers >= 0), "data.num_workers", source,
            "an integer of zero or more, or null (automatic)", self.num_workers)
        _require(self.labelled_repeat >= 1, "data.labelled_repeat", source, "at least 1", self.labelled_repeat)
        _require(self.labelled_share is None or (isinstance(self.labelled_share, (int, float))
                 and not isinstance(self.labelled_share, bool) and 0.0 < self.labelled_share <= 1.0),
                 "data.labelled_share", source, "a number in (0, 1], or null", self.labelled_share)
        _require(self.crop_placement in CROP_PLACEMENTS, "data.crop_placement", source,
                 "one of " + ", ".join(CROP_PLACEMENTS), self.crop_placement)
        _require(isinstance(self.canvas_scale, (int, float)) and not isinstance(self.canvas_scale, bool)
                 and 1.0 <= self.canvas_scale <= 8.0, "data.canvas_scale", source, "a number in [1, 8]",
                 self.canvas_scale)
        _require(self.host_patches in HOST_PATCHES, "data.host_patches", source, "one of " + ", ".join(HOST_PATCHES),
                 self.host_patches)
        _require(isinstance(self.synth_margin, int) and not isinstance(self.synth_margin, bool)
                 and 0 <= self.synth_margin <= 16, "data.synth_margin", source, "an integer in 0..16", self.synth_margin)
        return dataclasses.replace(
            self,
            spacing=_numbers("data.spacing", list(organ.target_spacing) if self.spacing is None else self.spacing,
                             3, source),
            hu_window=hw,
            roi_size=_numbers("data.roi_size", list(organ.roi_size) if self.roi_size is None else self.roi_size,
                              3, source, integer=True),
        )


@dataclass(frozen=True)
class ModelConfig:
    """Section ``model``: the segmentation network (SwinUNETR, U-Net or DynUNet)."""

    name: str = "swinunetr"
    feature_size: int = 48                                   # swinunetr
    use_v2: bool = True                                      # swinunetr
    use_checkpoint: bool = True                              # swinunetr: gradient checkpointing
    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])   # unet
    strides: list[int] = field(default_factory=lambda: [2, 2, 2])             # unet
    num_res_units: int = 2                                   # unet
    filters: list[int] = field(default_factory=lambda: [32, 64, 128, 256])    # dynunet
    dropout: float = 0.0

    @property
    def input_multiple(self) -> int:
        """Input sizes the network accepts are multiples of this."""
        if self.name == "swinunetr":
            return 32
        if self.name == "unet":
            return int(math.prod(self.strides))
        return 2 ** (len(self.filters) - 1)

    def checked(self, source: str, roi: list[int]) -> "ModelConfig":
        _require(self.name in MODEL_NAMES, "model.name", source, f"one of {', '.join(MODEL_NAMES)}", self.name)
        _require(self.feature_size > 0 and self.feature_size % 12 == 0, "model.feature_size", source,
                 "a positive multiple of 12 (SwinUNETR)", self.feature_size)
        channels = _int_list("model.channels", self.channels, source, 2)
        strides = _int_list("model.strides", self.strides, source, 1)
        if len(strides) != len(channels) - 1:
            raise ConfigError(f"model.strides in {source} needs one entry fewer than model.channels "
                              f"({len(channels)} channels, {len(strides)} strides)")
        _require(self.num_res_units >= 0, "model.num_res_units", source, "zero or more", self.num_res_units)
        filters = _int_list("model.filters", self.filters, source, 2)
        _require(0.0 <= self.dropout < 1.0, "model.dropout", source, "in [0, 1)", self.dropout)
        if self.name == "swinunetr" and (any(s % 32 for s in roi) or max(roi) < 64):
            raise ConfigError(f"data.roi_size {roi} in {source} must be multiples of 32, at least one of them 64 "
                              "or more, for swinunetr")
        if self.name == "unet":
            f = math.prod(strides)
            if any(s % f for s in roi):
                raise ConfigError(f"data.roi_size {roi} in {source} must be divisible by {f} "
                                  f"(the product of model.strides) for unet")
        return dataclasses.replace(self, channels=channels, strides=strides, filters=filters)


@dataclass(frozen=True)
class TrainConfig:
    """Section ``train``: optimisation, schedule, logging, folds and CutMix."""

    max_steps: int = 20000
    batch_size: int = 1
    lr: float = 3.0e-4
    weight_decay: float = 1.0e-5
    amsgrad: bool = True
    warmup_steps: int = 500
    amp: bool = True
    seed: int = 0
    val_every: int = 1000
    checkpoint_every: int = 100
    log_every: int = 10
    folds: int = 5
    fold: int = 0
    cutmix: bool = True            # spatial CutMix of the patches of a step (METHOD §6), as the paper
    cutmix_beta: float = 0.2
    dice_batch: bool = False       # Dice of the loss over the whole batch (nnU-Net's batch Dice), not per patch:
                                   # a patch without a lesion then adds no "predict no lesion anywhere" Dice term

    def checked(self, source: str) -> "TrainConfig":
        for k in ("max_steps", "batch_size", "val_every", "checkpoint_every", "log_every"):
            _require(getattr(self, k) >= 1, f"train.{k}", source, "at least 1", getattr(self, k))
        _require(self.lr > 0, "train.lr", source, "positive", self.lr)
        _require(self.weight_decay >= 0, "train.weight_decay", source, "zero or more", self.weight_decay)
        _require(self.warmup_steps >= 0, "train.warmup_steps", source, "zero or more", self.warmup_steps)
        _require(self.folds >= 2, "train.folds", source, "at least 2", self.folds)
        _require(0 <= self.fold < self.folds, "train.fold", source, f"in [0, {self.folds})", self.fold)
        _require(self.cutmix_beta > 0, "train.cutmix_beta", source, "positive", self.cutmix_beta)
        _require(0 <= self.seed <= SEED_MAX, "train.seed", source, f"an integer in 0..{SEED_MAX}", self.seed)
        return self


@dataclass(frozen=True)
class ValConfig:
    """Section ``val``: sliding-window inference (validation, predict, QC)."""

    overlap: float = 0.75
    sw_batch_size: int = 4

    def checked(self, source: str) -> "ValConfig":
        _require(0.0 <= self.overlap < 1.0, "val.overlap", source, "in [0, 1)", self.overlap)
        _require(self.sw_batch_size >= 1, "val.sw_batch_size", source, "at least 1", self.sw_batch_size)
        return self


@dataclass(frozen=True)
class NetSpec:
    """A MONAI residual 3D U-Net of the generator or discriminator (``synth.generator``, ``synth.discriminator``)."""

    channels: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    strides: list[int] = field(default_factory=lambda: [2, 2, 2])
    num_res_units: int = 2
    norm: str = "instance"

    def checked(self, source: str, key: str, roi: list[int]) -> "NetSpec":
        ch = _int_list(f"{key}.channels", self.channels, source, 2)
        st = _int_list(f"{key}.strides", self.strides, source, 1)
        if len(st) != len(ch) - 1:
            raise ConfigError(f"{key}.strides in {source} needs one entry fewer than {key}.channels")
        f = math.prod(st)
        if any(r % f for r in roi):
            raise ConfigError(f"data.roi_size {roi} in {source} must be divisible by {f} "
                              f"(the product of {key}.strides)")
        _require(self.norm in NORMS, f"{key}.norm", source, f"one of {', '.join(NORMS)}", self.norm)
        _require(self.num_res_units >= 0, f"{key}.num_res_units", source, "zero or more", self.num_res_units)
        return dataclasses.replace(self, channels=ch, strides=st)


SYNTH_LESIONS = ("rules", "profile")
D_CONTEXTS = ("lesion_box", "patch")  # what Stage 1's discriminator sees around a lesion (synth.d_context)


@dataclass(frozen=True)
class SynthConfig:
    """Section ``synth``: Stage 1 (``train-synth``), learned synthesis and Stage 2's online synthesis."""

    generator: NetSpec = field(default_factory=NetSpec)
    discriminator: NetSpec = field(default_factory=NetSpec)
    adv_weight: float | None = None  # null: 0.1 abdomen, 0.5 chest
    lr: float = 1.0e-4
    betas: list[float] = field(default_factory=lambda: [0.0, 0.999])
    max_steps: int = 20000
    epoch_steps: int = 200           # logging "epoch": losses, probe recall, QC rate, PNG grid
    checkpoint_every: int = 100
    log_every: int = 10
    labelled_fraction: float = 0.5   # share of samples drawn from the labelled datalist
    size: str = "mix"
    blur_kernel: int = 7             # Gaussian blur of the difference map (kernel, sigma in voxels)
    blur_sigma: float = 1.0
    probe_samples: int = 8           # fixed patches scored each epoch (recall of fake tumours)
    context: str = "bbox"            # learned synthesis runs G on the lesion box + margin, or the whole patch
    context_margin: int = 16         # target voxels of context either side of the lesion box
    online_prob: float = 1.0         # Stage 2: probability of synthesising on an eligible patch (paper: 1)
    online_max_tries: int = 1        # Stage 2: tumours drawn per patch when QC rejects (paper: 1)
    online_on: str = "all"           # Stage 2: patches synthesised on: all (labelled and host) or hosts only
    lesions: str = "rules"           # Stage 1's fake lesions: rules (masks + learned map) or profile (profile
                                     # render + learned residual; train-synth --profile)
    residual_hu: float = 300.0       # profile lesions: the learned residual's bound |r| (HU)
    realism_samples: int = 24        # fixed probe lesions whose realism AUC is logged each epoch (--realism-real)
    d_context: str = "lesion_box"    # Stage 1's discriminator reads each lesion (real or fake) in one geometry: its
                                     # context box, centred (freetumor.lesions.context); patch: the whole patch

    def checked(self, source: str, roi: list[int]) -> "SynthConfig":
        gen = self.generator.checked(source, "synth.generator", roi)
        disc = self.discriminator.checked(source, "synth.discriminator", roi)
        adv = self.adv_weight
        if adv is not None:
            _require(isinstance(adv, (int, float)) and not isinstance(adv, bool) and adv >= 0, "synth.adv_weight",
                     source, "a number >= 0 or null", adv)
            adv = float(adv)
        _require(self.lr > 0, "synth.lr", source, "positive", self.lr)
        betas = _numbers("synth.betas", self.betas, 2, source, positive=False)
        _require(all(0 <= b < 1 for b in betas), "synth.betas", source, "two numbers in [0, 1)", betas)
        for k in ("max_steps", "epoch_steps", "checkpoint_every", "log_every", "blur_kernel"):
            _require(getattr(self, k) >= 1, f"synth.{k}", source, "at least 1", getattr(self, k))
        _require(self.blur_kernel % 2 == 1, "synth.blur_kernel", source, "odd", self.blur_kernel)
        _require(self.blur_sigma > 0, "synth.blur_sigma", source, "positive", self.blur_sigma)
        _require(0.0 <= self.labelled_fraction <= 1.0, "synth.labelled_fraction", source, "in [0, 1]",
                 self.labelled_fraction)
        _require(self.size in SIZE_CHOICES, "synth.size", source, f"one of {', '.join(SIZE_CHOICES)}", self.size)
        _require(self.probe_samples >= 0, "synth.probe_samples", source, "zero or more", self.probe_samples)
        _require(self.context in CONTEXTS, "synth.context", source, "bbox or patch", self.context)
        _require(self.context_margin >= 0, "synth.context_margin", source, "zero or more", self.context_margin)
        _require(0.0 <= self.online_prob <= 1.0, "synth.online_prob", source, "in [0, 1]", self.online_prob)
        _require(self.online_max_tries >= 1, "synth.online_max_tries", source, "at least 1", self.online_max_tries)
        _require(self.online_on in ("all", "hosts"), "synth.online_on", source, "all or hosts", self.online_on)
        _require(self.lesions in SYNTH_LESIONS, "synth.lesions", source, "rules or profile", self.lesions)
        _require(isinstance(self.residual_hu, (int, float)) and not isinstance(self.residual_hu, bool)
                 and self.residual_hu > 0, "synth.residual_hu", source, "a positive number (HU)", self.residual_hu)
        _require(self.d_context in D_CONTEXTS, "synth.d_context", source, "lesion_box or patch", self.d_context)
        _require(self.realism_samples >= 5, "synth.realism_samples", source, "at least 5", self.realism_samples)
        return dataclasses.replace(self, generator=gen, discriminator=disc, adv_weight=adv, betas=betas)


@dataclass(frozen=True)
class QCConfig:
    """Section ``qc``: quality control of synthetic tumours (METHOD.md §7) plus cheap plausibility checks."""

    threshold: float = 0.7          # keep if > threshold of the fake voxels are predicted tumour
    min_inside: float = 0.99        # fraction of the tumour inside the organ
    min_visible_mm3: float = 30.0   # volume whose intensity changed by at least visible_hu
    visible_hu: float = 10.0
    contrast_hu: list[float] | None = None  # [lo, hi] mean tumour minus surrounding-organ HU; null: organ default
    shell_mm: float = 5.0           # width of the surrounding-organ ring
    batch_size: int = 4             # tumours judged in one segmentor forward (1: one by one; same decisions)
    device: str | None = None       # the QC segmentor's device (cpu, cuda, cuda:N); null: the other networks'
    context: str = "patch"          # the segmentor's input around a lesion: patch (the paper: the training
                                    # patch), fit (box + margin rounded up to the input multiple, filled
                                    # with the scan) or bbox (box + margin, zero-padded)
    margin: int = 8                 # fit / bbox: network voxels of context either side of the lesion box

    def checked(self, source: str) -> "QCConfig":
        num = (int, float)
        _require(isinstance(self.batch_size, int) and not isinstance(self.batch_size, bool)
                 and self.batch_size >= 1, "qc.batch_size", source, "an integer of at least 1", self.batch_size)
        _require(self.device is None or (isinstance(self.device, str) and DEVICE_RE.fullmatch(self.device)),
                 "qc.device", source, "cpu, cuda, cuda:N or mps", self.device)
        _require(self.context in QC_CONTEXTS, "qc.context", source, "fit, patch or bbox", self.context)
        _require(isinstance(self.margin, int) and not isinstance(self.margin, bool) and self.margin >= 0,
                 "qc.margin", source, "an integer of at least 0", self.margin)
        _require(isinstance(self.threshold, num) and 0.0 <= self.threshold < 1.0, "qc.threshold", source,
                 "in [0, 1)", self.threshold)
        _require(isinstance(self.min_inside, num) and 0.0 <= self.min_inside <= 1.0, "qc.min_inside", source,
                 "in [0, 1]", self.min_inside)
        for k in ("min_visible_mm3", "visible_hu", "shell_mm"):
            _require(getattr(self, k) >= 0, f"qc.{k}", source, "zero or more", getattr(self, k))
        contrast = self.contrast_hu
        if contrast is not None:
            contrast = _numbers("qc.contrast_hu", contrast, 2, source, positive=False)
            _require(contrast[0] < contrast[1], "qc.contrast_hu", source, "[lo, hi] with lo < hi", contrast)
        return dataclasses.replace(self, threshold=float(self.threshold), min_inside=float(self.min_inside),
                                   contrast_hu=contrast)


@dataclass(frozen=True)
class Config:
    """A whole training configuration: the organ and task, and one typed section each."""

    name: str | None = None
    organ: str = "liver"
    task: str = "organ3"
    label_map: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    val: ValConfig = field(default_factory=ValConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    qc: QCConfig = field(default_factory=QCConfig)

    # -- facts derived from the organ and task (see freetumor.tasks and freetumor.organs)
    @property
    def organ_info(self) -> Organ:
        """The :class:`~freetumor.organs.Organ` of ``organ`` (region, sign, window, ...)."""
        return get_organ(self.organ)

    @property
    def num_classes(self) -> int:
        """Output classes of the segmentor: organ3 -> 3, chest3 -> 3, abdomen7 -> 7."""
        return num_classes(self.task)

    @property
    def organ_classes(self) -> dict[str, tuple[int, int]]:
        """Organ -> (organ class, tumour class) in the training classes of ``task``."""
        return organ_classes(self.task, self.organ)

    @property
    def tumour_classes(self) -> tuple[int, ...]:
        return tumour_classes(self.task, self.organ)

    def to_dict(self) -> dict:
        """The config as a plain nested dict (what config.yaml and checkpoints store)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "Config":
        """A copy with ``"section.key"`` (or top-level) values changed, validated again.

        Example:
            >>> load_config("liver-cpu-tiny").replace(**{"data.neg": 0.0}).data.neg
            0.0
        """
        tree = self.to_dict()
        for key, value in changes.items():
            *parents, last = key.split(".")
            node = tree
            for p in parents:
                node = node[p]
            if last not in node:
                raise _unknown(key, "Config.replace")
            node[last] = value
        return resolve_config(tree, source="Config.replace")


DEFAULTS: dict = Config().to_dict()

# --------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.2; PyYAML needs ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


class _Dumper(yaml.SafeDumper):
    """Block style, except short lists of scalars (``[1.5, 1.5, 1.5]``) on one line."""


def _represent_list(dumper: yaml.SafeDumper, data: list):
    flow = all(isinstance(x, (int, float, str, bool)) or x is None for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


# --------------------------------------------------------------------------- presets


def list_presets() -> list[str]:
    """Names of the bundled presets (without ``.yaml``), sorted."""
    if not CONFIG_DIR.is_dir():
        return []
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _resolve_spec(spec: str | os.PathLike) -> tuple[Path, str]:
    """The YAML file a spec names, and the name used in messages."""
    text = os.fspath(spec)
    path = Path(text)
    if path.is_file():
        return path, text
    stem = text[:-5] if text.endswith(".yaml") else text[:-4] if text.endswith(".yml") else text
    if "/" not in stem and os.sep not in stem and stem:
        preset = CONFIG_DIR / f"{stem}.yaml"
        if preset.is_file():
            return preset, preset.name
    if path.exists():
        raise InputError(text, "is not a file (expected a YAML config)")
    presets = ", ".join(list_presets()) or "none installed"
    raise ConfigError(f"config {text!r} not found: neither a YAML file nor a preset (presets: {presets})")


# --------------------------------------------------------------------------- merging


def _key_paths(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        out.append(prefix + k)
        if isinstance(v, dict):
            out.extend(_key_paths(v, prefix + k + "."))
    return out


_ALL_KEYS = _key_paths(DEFAULTS)


def _unknown(key: str, source: str) -> ConfigError:
    hint = difflib.get_close_matches(key, _ALL_KEYS, n=1, cutoff=0.75)
    more = f" (did you mean {hint[0]!r}?)" if hint else ""
    return ConfigError(f"unknown config key {key!r} in {source}{more}")


def _type_name(t: type) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list"}.get(
        t, t.__name__)


def _check_type(key: str, value: Any, default: Any, source: str) -> Any:
    """``value`` converted to the default's type, or a ConfigError."""
    if default is None:
        return value
    want = type(default)
    ok = False
    if want is bool:
        ok = isinstance(value, bool)
    elif want is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif want is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
    elif want is str:
        ok = isinstance(value, str)
    elif want is list:
        ok = isinstance(value, (list, tuple))
        if ok:
            value = list(value)
    if not ok:
        raise ConfigError(f"config key {key!r} in {source} must be {_type_name(want)}, got {value!r}")
    return value


def _merge(base: dict, schema: dict, update: Any, source: str, prefix: str = "") -> None:
    """Deep-merge ``update`` into ``base`` (in place), checking keys and types against ``schema``."""
    if not isinstance(update, dict):
        where = f"section {prefix[:-1]!r}" if prefix else "the top level"
        raise ConfigError(f"{where} of {source} must be a mapping of keys to values, got {update!r}")
    for k, v in update.items():
        key = f"{prefix}{k}"
        if not isinstance(k, str) or k not in schema:
            raise _unknown(key, source)
        default = schema[k]
        if isinstance(default, dict):
            if v is None:  # an empty section in YAML
                continue
            _merge(base[k], default, v, source, key + ".")
        else:
            base[k] = copy.deepcopy(_check_type(key, v, default, source))


def _parse_override(text: str) -> dict:
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"malformed override {text!r}: expected KEY=VALUE, e.g. train.lr=1e-4")
    key, _, raw = text.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not key or not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in parts):
        raise ConfigError(f"malformed override {text!r}: expected KEY=VALUE with a dotted key, e.g. train.lr=1e-4")
    node_schema: Any = DEFAULTS
    for i, part in enumerate(parts):
        if not isinstance(node_schema, dict) or part not in node_schema:
            raise _unknown(".".join(parts[: i + 1]) if isinstance(node_schema, dict) else key, f"override {text!r}")
        node_schema = node_schema[part]
    check_yaml_text(raw, f"--set {key}", "value", _Loader)  # depth bounded before any object is built
    try:
        value = _yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"malformed override {text!r}: value is not valid YAML ({_one_line(exc)})") from None
    tree: dict = {}
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return tree



# --------------------------------------------------------------------------- building


def _build(tree: dict, source: str) -> Config:
    """The typed, validated config of a merged tree; fills registry defaults."""
    organ_name = tree["organ"]
    if not isinstance(organ_name, str):
        raise ConfigError(f"config key 'organ' in {source} must be one of {', '.join(ORGAN_NAMES)}, got {organ_name!r}")
    try:
        organ = get_organ(organ_name)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (config key 'organ' in {source})") from None

    task = tree["task"]
    if task not in TASKS:
        raise ConfigError(f"config key 'task' in {source} must be one of {', '.join(TASKS)}, got {task!r}")
    if task == "abdomen7" and organ.region != "abdomen":
        raise ConfigError(f"task 'abdomen7' is for abdominal organs, not {organ.name!r} ({source}); use chest3 or organ3")
    if task == "chest3" and organ.region != "chest":
        raise ConfigError(f"task 'chest3' is for chest organs, not {organ.name!r} ({source}); use organ3 or abdomen7")

    lm = tree["label_map"]
    if lm is not None:
        if not isinstance(lm, str) or not lm:
            raise ConfigError(f"config key 'label_map' in {source} must be a label-map name or .json path, got {lm!r}")
        if lm in PRESETS:
            if not PRESETS[lm].supports(organ.name):
                raise ConfigError(f"label map {lm!r} has no {organ.name!r} ({source})")
        elif not (lm.lower().endswith(".json") or Path(lm).exists()):
            raise ConfigError(
                f"config key 'label_map' in {source}: unknown label map {lm!r}; use one of "
                f"{', '.join(PRESET_NAMES)} or a .json file")

    name = tree["name"]
    data = DataConfig(**tree["data"]).checked(source, organ)
    roi = data.roi_size
    s = dict(tree["synth"])
    s["generator"], s["discriminator"] = NetSpec(**s["generator"]), NetSpec(**s["discriminator"])
    return Config(
        name=None if name is None else str(name),
        organ=organ.name,
        task=task,
        label_map=lm,
        data=data,
        model=ModelConfig(**tree["model"]).checked(source, roi),
        train=TrainConfig(**tree["train"]).checked(source),
        val=ValConfig(**tree["val"]).checked(source),
        synth=SynthConfig(**s).checked(source, roi),
        qc=QCConfig(**tree["qc"]).checked(source),
    )


# --------------------------------------------------------------------------- public API


def resolve_config(data: dict | Config | None, overrides: Sequence[str] = (), *, source: str = "config",
                   name: str | None = None) -> Config:
    """Merge a config mapping (e.g. one stored in a checkpoint) over DEFAULTS, apply overrides, validate.

    Args:
        data: the user's (partial) config, or a :class:`Config`; ``None`` means all defaults.
        overrides: ``"a.b=value"`` strings.
        source: how messages name where ``data`` came from.
        name: value for ``name`` when the config leaves it ``null``.
    """
    tree = copy.deepcopy(DEFAULTS)
    if isinstance(data, Config):
        data = data.to_dict()
    if data is not None:
        _merge(tree, DEFAULTS, data, source)
    if isinstance(overrides, str):
        overrides = [overrides]
    for ov in overrides:
        _merge(tree, DEFAULTS, _parse_override(ov), f"override {ov!r}")
    if tree["name"] is None and name is not None:
        tree["name"] = name
    return _build(tree, source)


def load_config(spec: str | os.PathLike, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config or preset, merge it over :data:`DEFAULTS`, apply overrides and validate.

    Args:
        spec: a YAML file, or a preset name (see :func:`list_presets`), with or without ``.yaml``.
        overrides: ``"a.b=value"`` strings, e.g. ``train.lr=1e-3``, ``data.roi_size=[64,64,64]``.

    Raises:
        ConfigError: unknown key, wrong type, bad value or combination, malformed override.
        InputError: the file is unreadable, empty or not valid YAML.
    """
    path, shown = _resolve_spec(spec)
    try:
        text = read_text_bounded(path, "config")
    except InputError as exc:
        raise InputError(shown, exc.problem) from None
    check_yaml_text(text, shown, "config", _Loader)  # size and depth bounded before any object is built
    try:
        data = _yaml_load(text)
    except yaml.YAMLError as exc:
        raise InputError(shown, f"not valid YAML ({_one_line(exc)})") from None
    except RecursionError:
        raise InputError(shown, "YAML nested too deeply to be a config") from None
    if data is None or data == {}:
        # all defaults would be the full paper network: refuse rather than run it unasked
        raise InputError(shown, "config is empty (it would run the full paper SwinUNETR on defaults); "
                                "give its settings, or a preset such as liver-cpu-tiny")
    stem = path.stem if path.suffix in (".yaml", ".yml") else path.name
    return resolve_config(data, overrides, source=shown, name=stem)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write a config as YAML, atomically; :func:`load_config` reads it back unchanged."""
    text = yaml.dump(cfg.to_dict(), Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)
    write_bytes_atomic(path, text.encode("utf-8"))
