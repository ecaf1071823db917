"""Training configuration: a YAML file (or a named preset) merged over :data:`DEFAULTS`.

A config is a plain nested ``dict`` of the schema in :data:`DEFAULTS`. Presets
live in the package's ``configs/`` folder (``freetumor.configs``); :func:`load_config`
accepts a YAML path or a preset name (``liver-paper``, ``liver-cpu-tiny.yaml``).

Rules:

* the YAML is deep-merged over :data:`DEFAULTS`; a key that is not in the schema
  is a :class:`~freetumor.errors.ConfigError` naming the key path;
* each value must have the default's type (``float`` accepts ``int``; ``None``
  defaults accept anything and are checked afterwards);
* ``overrides`` are ``"a.b=value"`` strings, the value parsed as YAML
  (``1e-3`` is a float here, as in YAML 1.2);
* ``data.spacing``, ``data.hu_window`` and ``data.roi_size`` left ``null`` are
  filled from the organ registry; ``name`` left ``null`` becomes the file stem.

``label_map`` stays ``null`` when not given: ``freetumor.labels.get_label_map(None, organ)``
then picks ``abdomen7`` or ``chest3``.

Example:
    >>> cfg = load_config("liver-cpu-tiny", ["train.lr=1e-3", "data.num_samples=1"])
    >>> cfg["name"], cfg["model"]["name"], cfg["train"]["lr"], cfg["data"]["spacing"]
    ('liver-cpu-tiny', 'unet', 0.001, [3.0, 3.0, 3.0])
    >>> num_classes(cfg)
    3
    >>> load_config("liver-cpu-tiny", ["train.max_stepz=3"])
    Traceback (most recent call last):
    ...
    freetumor.errors.ConfigError: unknown config key 'train.max_stepz' in override 'train.max_stepz=3' (did you mean 'train.max_steps'?)
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

import yaml

from .errors import ConfigError, InputError
from .organs import ORGAN_NAMES, get_organ

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

TASKS = ("organ3", "abdomen7", "chest3")
TASK_CLASSES = {"organ3": 3, "abdomen7": 7, "chest3": 3}
MODEL_NAMES = ("swinunetr", "unet", "dynunet")

DEFAULTS: dict = {
    "name": None,
    "organ": "liver",
    "task": "organ3",
    "label_map": None,
    "data": {
        "spacing": None,
        "hu_window": None,
        "roi_size": None,
        "num_samples": 4,
        "pos": 1.0,
        "neg": 1.0,
        "scale_intensity": True,
        "shift_intensity": True,
        "flip_prob": 0.2,
        "rot90_prob": 0.2,
        "cache": False,
        "num_workers": 0,
        "labelled_repeat": 1,
    },
    "model": {
        "name": "swinunetr",
        "feature_size": 48,
        "use_v2": True,
        "use_checkpoint": True,
        "channels": [32, 64, 128, 256],
        "strides": [2, 2, 2],
        "num_res_units": 2,
        "filters": [32, 64, 128, 256],
        "dropout": 0.0,
    },
    "train": {
        "max_steps": 20000,
        "batch_size": 1,
        "lr": 3.0e-4,
        "weight_decay": 1.0e-5,
        "amsgrad": True,
        "warmup_steps": 500,
        "amp": True,
        "seed": 0,
        "val_every": 1000,
        "checkpoint_every": 100,
        "log_every": 10,
        "folds": 5,
        "fold": 0,
        "cutmix": True,        # spatial CutMix of the patches of a step (METHOD §6), as the paper
        "cutmix_beta": 0.2,
    },
    "val": {
        "overlap": 0.75,
        "sw_batch_size": 4,
    },
    # Stage 1 (``freetumor train-synth``) and learned synthesis: METHOD.md §4.2, §5.
    "synth": {
        "generator": {"channels": [64, 128, 256, 512], "strides": [2, 2, 2], "num_res_units": 2,
                      "norm": "instance"},
        "discriminator": {"channels": [64, 128, 256, 512], "strides": [2, 2, 2], "num_res_units": 2,
                          "norm": "instance"},
        "adv_weight": None,        # null: 0.1 abdomen, 0.5 chest
        "lr": 1.0e-4,
        "betas": [0.0, 0.999],
        "max_steps": 20000,
        "epoch_steps": 200,        # logging "epoch": losses, probe recall, QC rate, PNG grid
        "checkpoint_every": 100,
        "log_every": 10,
        "labelled_fraction": 0.5,  # share of samples drawn from the labelled datalist
        "size": "mix",
        "blur_kernel": 7,          # Gaussian blur of the difference map (kernel, sigma in voxels)
        "blur_sigma": 1.0,
        "probe_samples": 8,        # fixed patches scored each epoch (recall of fake tumours)
        "context": "bbox",         # learned synthesis runs G on the lesion box + margin, or the whole patch
        "context_margin": 16,      # target voxels of context either side of the lesion box
        "online_prob": 1.0,        # Stage 2: probability of synthesising on an eligible patch (paper: 1)
        "online_max_tries": 1,     # Stage 2: tumours drawn per patch when QC rejects (paper: 1)
    },
    # Quality control of synthetic tumours (METHOD.md §7) plus cheap plausibility checks.
    "qc": {
        "threshold": 0.7,          # keep if > threshold of the fake voxels are predicted tumour
        "min_inside": 0.99,        # fraction of the tumour inside the organ
        "min_visible_mm3": 30.0,   # volume whose intensity changed by at least visible_hu
        "visible_hu": 10.0,
        "contrast_hu": None,       # [lo, hi] mean tumour minus surrounding-organ HU; null: organ default
        "shell_mm": 5.0,           # width of the surrounding-organ ring
    },
}


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


# --------------------------------------------------------------------------- validation


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


def _int_list(key: str, value: list, source: str, min_len: int) -> list[int]:
    ok = len(value) >= min_len and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in value)
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


def _validate(cfg: dict, source: str) -> dict:
    """Fill registry defaults and check value ranges and combinations."""
    organ_name = cfg["organ"]
    if not isinstance(organ_name, str):
        raise ConfigError(f"config key 'organ' in {source} must be one of {', '.join(ORGAN_NAMES)}, got {organ_name!r}")
    try:
        organ = get_organ(organ_name)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (config key 'organ' in {source})") from None
    cfg["organ"] = organ.name

    task = cfg["task"]
    if task not in TASKS:
        raise ConfigError(f"config key 'task' in {source} must be one of {', '.join(TASKS)}, got {task!r}")
    if task == "abdomen7" and organ.region != "abdomen":
        raise ConfigError(f"task 'abdomen7' is for abdominal organs, not {organ.name!r} ({source}); use chest3 or organ3")
    if task == "chest3" and organ.region != "chest":
        raise ConfigError(f"task 'chest3' is for chest organs, not {organ.name!r} ({source}); use organ3 or abdomen7")

    lm = cfg["label_map"]
    if lm is not None:
        from .labels import PRESET_NAMES, PRESETS

        if not isinstance(lm, str) or not lm:
            raise ConfigError(f"config key 'label_map' in {source} must be a label-map name or .json path, got {lm!r}")
        if lm in PRESETS:
            if not PRESETS[lm].supports(organ.name):
                raise ConfigError(f"label map {lm!r} has no {organ.name!r} ({source})")
        elif not (lm.lower().endswith(".json") or Path(lm).exists()):
            raise ConfigError(
                f"config key 'label_map' in {source}: unknown label map {lm!r}; use one of "
                f"{', '.join(PRESET_NAMES)} or a .json file")

    if cfg["name"] is not None and not isinstance(cfg["name"], str):
        cfg["name"] = str(cfg["name"])

    d = cfg["data"]
    d["spacing"] = _numbers("data.spacing", list(organ.target_spacing) if d["spacing"] is None else d["spacing"],
                            3, source)
    hw = list(organ.hu_window) if d["hu_window"] is None else d["hu_window"]
    hw = _numbers("data.hu_window", hw, 2, source, positive=False)
    _require(hw[0] < hw[1], "data.hu_window", source, "[a_min, a_max] with a_min < a_max", hw)
    d["hu_window"] = hw
    d["roi_size"] = _numbers("data.roi_size", list(organ.roi_size) if d["roi_size"] is None else d["roi_size"],
                             3, source, integer=True)
    _require(d["num_samples"] >= 1, "data.num_samples", source, "at least 1", d["num_samples"])
    for k in ("pos", "neg"):
        _require(d[k] >= 0, f"data.{k}", source, "zero or more", d[k])
    _require(d["pos"] + d["neg"] > 0, "data.pos", source, "positive when data.neg is 0", d["pos"])
    for k in ("flip_prob", "rot90_prob"):
        _require(0.0 <= d[k] <= 1.0, f"data.{k}", source, "a probability in [0, 1]", d[k])
    _require(d["num_workers"] >= 0, "data.num_workers", source, "zero or more", d["num_workers"])
    _require(d["labelled_repeat"] >= 1, "data.labelled_repeat", source, "at least 1", d["labelled_repeat"])

    m = cfg["model"]
    roi = d["roi_size"]
    _require(m["name"] in MODEL_NAMES, "model.name", source, f"one of {', '.join(MODEL_NAMES)}", m["name"])
    _require(m["feature_size"] > 0 and m["feature_size"] % 12 == 0, "model.feature_size", source,
             "a positive multiple of 12 (SwinUNETR)", m["feature_size"])
    m["channels"] = _int_list("model.channels", m["channels"], source, 2)
    m["strides"] = _int_list("model.strides", m["strides"], source, 1)
    if len(m["strides"]) != len(m["channels"]) - 1:
        raise ConfigError(f"model.strides in {source} needs one entry fewer than model.channels "
                          f"({len(m['channels'])} channels, {len(m['strides'])} strides)")
    _require(m["num_res_units"] >= 0, "model.num_res_units", source, "zero or more", m["num_res_units"])
    m["filters"] = _int_list("model.filters", m["filters"], source, 2)
    _require(0.0 <= m["dropout"] < 1.0, "model.dropout", source, "in [0, 1)", m["dropout"])
    if m["name"] == "swinunetr" and (any(s % 32 for s in roi) or max(roi) < 64):
        raise ConfigError(f"data.roi_size {roi} in {source} must be multiples of 32, at least one of them 64 "
                          "or more, for swinunetr")
    if m["name"] == "unet":
        f = math.prod(m["strides"])
        if any(s % f for s in roi):
            raise ConfigError(f"data.roi_size {roi} in {source} must be divisible by {f} "
                              f"(the product of model.strides) for unet")

    t = cfg["train"]
    for k in ("max_steps", "batch_size", "val_every", "checkpoint_every", "log_every"):
        _require(t[k] >= 1, f"train.{k}", source, "at least 1", t[k])
    _require(t["lr"] > 0, "train.lr", source, "positive", t["lr"])
    _require(t["weight_decay"] >= 0, "train.weight_decay", source, "zero or more", t["weight_decay"])
    _require(t["warmup_steps"] >= 0, "train.warmup_steps", source, "zero or more", t["warmup_steps"])
    _require(t["folds"] >= 2, "train.folds", source, "at least 2", t["folds"])
    _require(0 <= t["fold"] < t["folds"], "train.fold", source, f"in [0, {t['folds']})", t["fold"])
    _require(t["cutmix_beta"] > 0, "train.cutmix_beta", source, "positive", t["cutmix_beta"])

    v = cfg["val"]
    _require(0.0 <= v["overlap"] < 1.0, "val.overlap", source, "in [0, 1)", v["overlap"])
    _require(v["sw_batch_size"] >= 1, "val.sw_batch_size", source, "at least 1", v["sw_batch_size"])
    _validate_synth(cfg, source)
    return cfg


NORMS = ("instance", "batch")


def _validate_synth(cfg: dict, source: str) -> None:
    from .organs import SIZE_CHOICES

    s = cfg["synth"]
    roi = cfg["data"]["roi_size"]
    for net in ("generator", "discriminator"):
        spec = s[net]
        if not isinstance(spec, dict) or set(spec) - {"channels", "strides", "num_res_units", "norm"}:
            raise ConfigError(f"config key 'synth.{net}' in {source} must have only channels, strides, "
                              f"num_res_units and norm, got {spec!r}")
        spec.setdefault("num_res_units", 2)
        spec.setdefault("norm", "instance")
        ch = _int_list(f"synth.{net}.channels", list(spec.get("channels", [])), source, 2)
        st = _int_list(f"synth.{net}.strides", list(spec.get("strides", [])), source, 1)
        if len(st) != len(ch) - 1:
            raise ConfigError(f"synth.{net}.strides in {source} needs one entry fewer than synth.{net}.channels")
        f = math.prod(st)
        if any(r % f for r in roi):
            raise ConfigError(f"data.roi_size {roi} in {source} must be divisible by {f} "
                              f"(the product of synth.{net}.strides)")
        _require(spec["norm"] in NORMS, f"synth.{net}.norm", source, f"one of {', '.join(NORMS)}", spec["norm"])
        _require(isinstance(spec["num_res_units"], int) and spec["num_res_units"] >= 0,
                 f"synth.{net}.num_res_units", source, "zero or more", spec["num_res_units"])
        spec["channels"], spec["strides"] = ch, st
    if s["adv_weight"] is not None:
        _require(isinstance(s["adv_weight"], (int, float)) and s["adv_weight"] >= 0, "synth.adv_weight", source,
                 "a number >= 0 or null", s["adv_weight"])
        s["adv_weight"] = float(s["adv_weight"])
    _require(s["lr"] > 0, "synth.lr", source, "positive", s["lr"])
    s["betas"] = _numbers("synth.betas", s["betas"], 2, source, positive=False)
    _require(all(0 <= b < 1 for b in s["betas"]), "synth.betas", source, "two numbers in [0, 1)", s["betas"])
    for k in ("max_steps", "epoch_steps", "checkpoint_every", "log_every", "blur_kernel"):
        _require(s[k] >= 1, f"synth.{k}", source, "at least 1", s[k])
    _require(s["blur_kernel"] % 2 == 1, "synth.blur_kernel", source, "odd", s["blur_kernel"])
    _require(s["blur_sigma"] > 0, "synth.blur_sigma", source, "positive", s["blur_sigma"])
    _require(0.0 <= s["labelled_fraction"] <= 1.0, "synth.labelled_fraction", source, "in [0, 1]",
             s["labelled_fraction"])
    _require(s["size"] in SIZE_CHOICES, "synth.size", source, f"one of {', '.join(SIZE_CHOICES)}", s["size"])
    _require(s["probe_samples"] >= 0, "synth.probe_samples", source, "zero or more", s["probe_samples"])
    _require(s["context"] in ("bbox", "patch"), "synth.context", source, "bbox or patch", s["context"])
    _require(s["context_margin"] >= 0, "synth.context_margin", source, "zero or more", s["context_margin"])
    _require(0.0 <= s["online_prob"] <= 1.0, "synth.online_prob", source, "in [0, 1]", s["online_prob"])
    _require(s["online_max_tries"] >= 1, "synth.online_max_tries", source, "at least 1", s["online_max_tries"])
    q = cfg["qc"]
    _require(0.0 <= q["threshold"] < 1.0, "qc.threshold", source, "in [0, 1)", q["threshold"])
    _require(0.0 <= q["min_inside"] <= 1.0, "qc.min_inside", source, "in [0, 1]", q["min_inside"])
    for k in ("min_visible_mm3", "visible_hu", "shell_mm"):
        _require(q[k] >= 0, f"qc.{k}", source, "zero or more", q[k])
    if q["contrast_hu"] is not None:
        q["contrast_hu"] = _numbers("qc.contrast_hu", q["contrast_hu"], 2, source, positive=False)
        _require(q["contrast_hu"][0] < q["contrast_hu"][1], "qc.contrast_hu", source, "[lo, hi] with lo < hi",
                 q["contrast_hu"])


# --------------------------------------------------------------------------- public API


def resolve_config(data: dict | None, overrides: Sequence[str] = (), *, source: str = "config",
                   name: str | None = None) -> dict:
    """Merge a config mapping (e.g. one stored in a checkpoint) over DEFAULTS, apply overrides, validate.

    Args:
        data: the user's (partial) config; ``None`` means all defaults.
        overrides: ``"a.b=value"`` strings.
        source: how messages name where ``data`` came from.
        name: value for ``name`` when the config leaves it ``null``.
    """
    cfg = copy.deepcopy(DEFAULTS)
    if data is not None:
        _merge(cfg, DEFAULTS, data, source)
    if isinstance(overrides, str):
        overrides = [overrides]
    for ov in overrides:
        _merge(cfg, DEFAULTS, _parse_override(ov), f"override {ov!r}")
    if cfg["name"] is None and name is not None:
        cfg["name"] = name
    return _validate(cfg, source)


def load_config(spec: str | os.PathLike, overrides: Sequence[str] = ()) -> dict:
    """Load a YAML config or preset, merge it over :data:`DEFAULTS`, apply overrides and validate.

    Args:
        spec: a YAML file, or a preset name (see :func:`list_presets`), with or without ``.yaml``.
        overrides: ``"a.b=value"`` strings, e.g. ``train.lr=1e-3``, ``data.roi_size=[64,64,64]``.

    Raises:
        ConfigError: unknown key, wrong type, bad value or combination, malformed override.
        InputError: the file is unreadable or not valid YAML.
    """
    path, shown = _resolve_spec(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(shown, f"cannot read config ({_one_line(exc)})") from None
    try:
        data = _yaml_load(text)
    except yaml.YAMLError as exc:
        raise InputError(shown, f"not valid YAML ({_one_line(exc)})") from None
    stem = path.stem if path.suffix in (".yaml", ".yml") else path.name
    return resolve_config(data, overrides, source=shown, name=stem)


def save_config(cfg: dict, path: str | os.PathLike) -> None:
    """Write a config as YAML, atomically; :func:`load_config` reads it back unchanged."""
    from .io import write_bytes_atomic

    def plain(x):
        if isinstance(x, dict):
            return {str(k): plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if hasattr(x, "item") and callable(x.item):  # numpy scalars
            return x.item()
        return x

    text = yaml.dump(plain(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)
    write_bytes_atomic(path, text.encode("utf-8"))


def num_classes(cfg: dict) -> int:
    """Output classes of the segmentor: organ3 -> 3, chest3 -> 3, abdomen7 -> 7."""
    task = cfg.get("task") if isinstance(cfg, dict) else None
    try:
        return TASK_CLASSES[task]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}") from None
