"""Model checkpoints: one ``torch.save`` file that is safe to load with ``weights_only=True``.

The file holds a dict of tensors and plain Python types only::

    {"format": "freetumor-checkpoint", "format_version": 1, "freetumor_version": "0.1.0", "kind": "segmentor",
     "config_json": "<the resolved config as JSON>", "step": 1200,
     "model": state_dict, "optimizer": ..., "scheduler": ..., "scaler": ..., "extra": {...}}

Writing is atomic (a temporary file beside the target, then ``os.replace``), so a
crash never leaves a partial checkpoint. Loading always uses ``weights_only=True``;
every problem (missing, truncated, foreign or unsafe file, weights of another
architecture) is a one-line :class:`~freetumor.errors.InputError` naming the file.

Example:
    >>> import tempfile, torch
    >>> from freetumor.config import load_config
    >>> from freetumor.models import build_model
    >>> cfg = load_config("liver-cpu-tiny")
    >>> path = tempfile.mkdtemp() + "/last.pt"
    >>> save_checkpoint(path, model=build_model(cfg), cfg=cfg, step=7, extra={"rng": rng_state()})
    >>> model, cfg2 = load_model(path)
    >>> load_checkpoint(path)["step"], cfg2 == cfg, model.training
    (7, True, False)
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from . import __version__
from .config import Config, check_checkpoint_file, check_device, resolve_config  # the two checks live in config (no PyTorch); re-exported
from .errors import ConfigError, InputError
from .io import atomic_path
from .models import build_network

CHECKPOINT_FORMAT = "freetumor-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "CHECKPOINT_KINDS",
    "check_device",
    "check_kind",
    "load_checkpoint",
    "load_model",
    "load_weights_into",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]


# --------------------------------------------------------------------------- safe values


def _safe(obj: Any, where: str) -> Any:
    """``obj`` as tensors and plain Python types that ``torch.load(weights_only=True)`` accepts."""
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.Tensor, torch.Size,
                                       torch.dtype, torch.device)):
        return obj
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            return [_safe(x, where) for x in obj.tolist()]
        if obj.dtype.kind in "biuf" and obj.dtype.str not in ("<u2", "<u4", "<u8", ">u2", ">u4", ">u8"):
            return torch.from_numpy(np.ascontiguousarray(obj)).clone()
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                k = str(k)
            out[k] = _safe(v, f"{where}[{k!r}]")
        return out
    if isinstance(obj, tuple):
        return tuple(_safe(v, where) for v in obj)
    if isinstance(obj, (list, set, frozenset)):
        return [_safe(v, where) for v in obj]
    raise TypeError(f"{where}: cannot store a {type(obj).__name__} in a checkpoint (tensors and plain types only)")


def rng_state() -> dict:
    """The random states of Python ``random``, numpy's global RNG, torch CPU and CUDA.

    The result holds only tensors and plain types, so it can go into ``extra``.
    """
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": {"version": int(version), "state": [int(x) for x in mt], "gauss": gauss},
        "numpy": {"name": str(name), "keys": [int(x) for x in keys], "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Mapping | None) -> None:
    """Restore what :func:`rng_state` returned; missing parts are left alone."""
    if not state:
        return
    py = state.get("python")
    if py:
        random.setstate((int(py["version"]), tuple(int(x) for x in py["state"]), py["gauss"]))
    npst = state.get("numpy")
    if npst:
        np.random.set_state((str(npst["name"]), np.asarray(npst["keys"], dtype=np.uint32), int(npst["pos"]),
                             int(npst["has_gauss"]), float(npst["cached_gaussian"])))
    ts = state.get("torch")
    if ts is not None:
        torch.set_rng_state(torch.as_tensor(ts, dtype=torch.uint8).cpu())
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8).cpu() for s in cuda])


# --------------------------------------------------------------------------- saving


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def _strip_module(state: Mapping[str, Any]) -> dict:
    out = {}
    for k, v in state.items():
        while k.startswith("module."):
            k = k[len("module."):]
        out[k] = v
    return out


CHECKPOINT_KINDS = ("segmentor", "generator", "synthesis-run")


def save_checkpoint(path: str | os.PathLike, *, model: torch.nn.Module, cfg: Config, step: int,
                    optimizer=None, scheduler=None, scaler=None, extra: dict | None = None,
                    kind: str = "segmentor") -> None:
    """Write a checkpoint atomically (temporary file in the same folder, then ``os.replace``).

    Args:
        model: the network (a DDP wrapper is unwrapped; ``module.`` key prefixes are removed).
        cfg: the resolved config; stored as JSON.
        step: optimiser steps completed.
        optimizer, scheduler, scaler: objects with ``state_dict()``; stored when given.
        extra: anything else made of tensors, numpy arrays and plain types (e.g. ``{"rng": rng_state()}``).
        kind: what the weights are: ``segmentor`` (a segmentation network), ``generator``
            (a Stage-1 difference-map generator) or ``synthesis-run`` (Stage-1 resume state).
    """
    if kind not in CHECKPOINT_KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}")
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "freetumor_version": _version(),
        "kind": kind,
        "config_json": json.dumps(cfg.to_dict()),
        "step": int(step),
        "model": _strip_module(_unwrap(model).state_dict()),
        "optimizer": None if optimizer is None else _safe(optimizer.state_dict(), "optimizer"),
        "scheduler": None if scheduler is None else _safe(scheduler.state_dict(), "scheduler"),
        "scaler": None if scaler is None else _safe(scaler.state_dict(), "scaler"),
        "extra": None if extra is None else _safe(extra, "extra"),
    }
    with atomic_path(path, ".tmp") as tmp, open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())


def _version() -> str:
    return __version__


# --------------------------------------------------------------------------- loading


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:120]}" if text else type(exc).__name__


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)`` and check it is ours.

    Returns the stored dict plus ``"config"``, the parsed ``config_json``.

    Raises:
        InputError: missing, truncated or corrupt file; a file that is not a freetumor
            checkpoint; a pickle with Python objects that safe loading refuses.
    """
    p = str(check_checkpoint_file(path))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # a plain pickle file
            ck = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's wording changes between versions; any refusal by the weights-only unpickler
        # (it names a GLOBAL, or says "Weights only load failed") means the file carries code
        text = " ".join(str(exc).split())
        if re.search(r"weights.only|GLOBAL", text, re.IGNORECASE):
            g = re.search(r"GLOBAL:? (\S+)", text)
            what = f" ({g.group(1)})" if g else ""
            raise InputError(p, f"holds pickled Python code or objects{what}; refused, nothing in it was run "
                                "(not a freetumor checkpoint)") from None
        raise InputError(p, "not a readable PyTorch checkpoint (corrupt, truncated or another kind of file)") from None
    except MemoryError:
        raise
    except RuntimeError as exc:
        if re.search(r"CUDA|cuda", str(exc)) and not torch.cuda.is_available():  # map_location cuda, no GPU
            raise ConfigError(f"{p}: cannot be loaded onto {map_location}: no CUDA on this machine") from None
        raise InputError(p, f"truncated or corrupt checkpoint ({_short(exc)})") from None
    except Exception as exc:  # zipfile.BadZipFile, EOFError, OSError, KeyError, ...
        raise InputError(p, f"truncated or corrupt checkpoint ({_short(exc)})") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        if isinstance(ck, dict) and ck and all(isinstance(v, torch.Tensor) for v in ck.values()):
            what = "a bare state dict"
        else:
            what = f"a {type(ck).__name__}" + (f" with keys {', '.join(map(str, list(ck)[:4]))}"
                                               if isinstance(ck, dict) and ck else "")
        raise InputError(p, f"not a freetumor checkpoint (it holds {what})")
    version = ck.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT_VERSION:
        raise InputError(p, f"checkpoint format version {version!r} is not supported by this freetumor "
                            f"(it reads version {CHECKPOINT_FORMAT_VERSION}); upgrade freetumor")
    try:
        cfg = json.loads(ck["config_json"])
        if not isinstance(cfg, dict):
            raise ValueError("not an object")
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(p, f"corrupt checkpoint: stored config unreadable ({_short(exc)})") from None
    model = ck.get("model")
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise InputError(p, "corrupt checkpoint: no model weights")
    if not isinstance(ck.get("step"), int):
        raise InputError(p, "corrupt checkpoint: no step count")
    ck["model"] = _strip_module(model)
    ck["config"] = cfg
    kind = ck.get("kind", "segmentor")  # files written before kinds existed hold segmentors
    if kind not in CHECKPOINT_KINDS:
        raise InputError(p, f"unknown checkpoint kind {kind!r}")
    ck["kind"] = kind
    return ck


def check_kind(ck: dict, path: str | os.PathLike, want: str) -> None:
    """One-line :class:`InputError` when a checkpoint holds another kind of weights."""
    if ck.get("kind", "segmentor") != want:
        hint = {"segmentor": "train one with `freetumor train-seg`",
                "generator": "use RUNDIR/generator.pt of `freetumor train-synth`",
                "synthesis-run": "resume state of `freetumor train-synth`"}[want]
        raise InputError(str(path), f"is a {ck.get('kind')} checkpoint, not a {want} ({hint})")


def _fit_error(path: str, arch: str, problem: str, ckpt_arch: str | None = None) -> InputError:
    tail = f" (the checkpoint holds a {ckpt_arch} model)" if ckpt_arch and ckpt_arch != arch else ""
    return InputError(path, f"weights do not fit the {arch} architecture: {problem}{tail}")


def _load_fitting(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str, arch: str,
                  ckpt_arch: str | None = None) -> None:
    """``model.load_state_dict(state)`` after checking every key and shape fits."""
    target = _unwrap(model)
    own = target.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise _fit_error(path, arch, f"{len(missing)} missing, {len(unexpected)} unexpected keys", ckpt_arch)
    for k, v in own.items():
        if tuple(v.shape) != tuple(state[k].shape):
            raise _fit_error(path, arch, f"shape mismatch at {k} ({tuple(state[k].shape)} in the checkpoint, "
                                         f"{tuple(v.shape)} in the model)", ckpt_arch)
    target.load_state_dict(state)


def load_weights_into(model: torch.nn.Module, path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint's weights into an existing model; returns the checkpoint dict.

    Raises:
        InputError: unreadable checkpoint, or weights that do not fit ``model``.
    """
    ck = load_checkpoint(path, map_location=map_location)
    arch = _arch_name(_unwrap(model))
    stored = ck["config"].get("model", {}) if isinstance(ck["config"].get("model"), dict) else {}
    _load_fitting(model, ck["model"], str(path), arch, stored.get("name"))
    return ck


def _arch_name(model: torch.nn.Module) -> str:
    names = {"SwinUNETR": "swinunetr", "UNet": "unet", "DynUNet": "dynunet"}
    return names.get(type(model).__name__, type(model).__name__)


def load_network(source, kind: str, map_location="cpu") -> tuple[torch.nn.Module, Config]:
    """A trained network in eval mode on ``map_location``, and the config it was trained with.

    Args:
        source: a checkpoint path, or an already loaded ``(model, cfg)`` pair (returned as is,
            moved to ``map_location`` and put in eval mode; a dict config is resolved).
        kind: ``segmentor`` (``train-seg``'s best.pt / last.pt) or ``generator``
            (``train-synth``'s generator.pt).

    Raises:
        InputError: unreadable checkpoint, another kind of checkpoint, an invalid stored
            config, or weights that do not fit.
    """
    if not isinstance(source, (str, os.PathLike)):
        model, cfg = source
        cfg = cfg if isinstance(cfg, Config) else resolve_config(cfg, source=f"{kind} config")
    else:
        p = str(source)
        ck = load_checkpoint(p, map_location=map_location)
        check_kind(ck, p, kind)
        try:
            cfg = resolve_config(ck["config"], source=p)
            model = build_network(cfg, kind)
        except ConfigError as exc:
            raise InputError(p, f"stored config: {exc}") from None
        _load_fitting(model, ck["model"], p, cfg.model.name if kind == "segmentor" else kind)
    if map_location is not None and isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    model.eval()
    return model, cfg


def load_model(path: str | os.PathLike, map_location="cpu") -> tuple[torch.nn.Module, Config]:
    """A trained segmentor (``RUNDIR/best.pt``) in eval mode, and its config (:func:`load_network`)."""
    return load_network(path, "segmentor", map_location)
