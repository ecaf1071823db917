"""Step-indexed training data shared by the trainers: folds, datasets, batches.

Sample ``i`` of a run is drawn deterministically from ``(seed, i)``: the case it reads and
the seed of its random transforms depend only on ``i``. What a step sees therefore depends
only on the step number, so a resumed run, or a run with more data-loader workers, sees
exactly the same patches as an uninterrupted one.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from monai.data import list_data_collate
from monai.transforms import Compose, Randomizable

from ..errors import ConfigError
from ..placement import HOST, LABELLED, ROLE, paste_into_host

SPLIT_SEED = 0  # the k-fold split is the same for every method and seed, so comparisons are paired


def kfold_split(entries: list[dict], folds: int, fold: int) -> tuple[list[dict], list[dict]]:
    """Train/validation entries of one fold: the datalist's ``fold`` field if every entry has
    one, else a deterministic shuffle of the sorted image paths dealt into ``folds`` folds.

    Example:
        >>> entries = [{"image": f"{i}.nii.gz"} for i in range(5)]
        >>> train, val = kfold_split(entries, 5, 0)
        >>> len(train), len(val)
        (4, 1)
    """
    if not 0 <= fold < folds:
        raise ConfigError(f"fold {fold} is outside 0..{folds - 1}")
    if entries and all("fold" in e for e in entries):
        val = [e for e in entries if int(e["fold"]) == fold]
        train = [e for e in entries if int(e["fold"]) != fold]
    else:
        order = sorted(entries, key=lambda e: e["image"])
        perm = np.random.default_rng(SPLIT_SEED).permutation(len(order))
        assign = {int(p): k % folds for k, p in enumerate(perm)}
        val = [e for i, e in enumerate(order) if assign[i] == fold]
        train = [e for i, e in enumerate(order) if assign[i] != fold]
    if not train:
        raise ConfigError(f"fold {fold} leaves no training cases ({len(entries)} labelled cases in all)")
    return train, val


class StepDataset(torch.utils.data.Dataset):
    """Index ``i`` -> the patches of global sample ``i`` (deterministic in ``i``).

    The transform is split at its first random step: the deterministic head (loading,
    resampling, windowing) runs once per case and is kept when ``cache`` is on. A last step
    with a ``synthesize_many`` method (:class:`~freetumor.transforms.RandTumorSynthesisd`) runs
    once on all patches of a batch (:meth:`__getitems__`, which the data loader calls): one
    segmentor forward judges all their tumours, and each patch is what :meth:`__getitem__` gives.
    """

    def __init__(self, entries: list[dict], transform, seed: int, cache: bool = False,
                 host_context: tuple | None = None):
        self.entries = entries
        # (roi, canvas_scale): labelled cases smaller than the patch go into host context (placement.paste_into_host)
        self.host_context = host_context
        self.host_ids = [k for k, e in enumerate(entries) if e.get(ROLE) == HOST]
        steps = list(transform.transforms)
        first = next((k for k, t in enumerate(steps) if isinstance(t, Randomizable)), len(steps))
        self.pre = Compose(steps[:first])
        self.rand = Compose(steps[first:])
        self.synth = steps[-1] if first < len(steps) and hasattr(steps[-1], "synthesize_many") else None
        # Seeded through self.rand (so each step gets the seed it gets there), run without the last step.
        self.rand_head = Compose(steps[first:-1]) if self.synth is not None else None
        self.seed = int(seed)
        self.cache: dict[int, dict] | None = {} if cache else None

    def __len__(self) -> int:
        return 1 << 40

    def prepared(self, k: int) -> dict:
        """Entry ``k`` after the deterministic transforms (from the cache when it is on)."""
        if self.cache is not None and k in self.cache:
            return self.cache[k]
        d = self.pre({key: v for key, v in self.entries[k].items() if key in ("image", "label", ROLE)})
        if self.cache is not None:
            self.cache[k] = d
        return d

    def case_index(self, i: int) -> int:
        """The entry global sample ``i`` reads: each epoch is a seeded permutation of the entries."""
        n = len(self.entries)
        epoch, pos = divmod(int(i), n)
        return int(np.random.default_rng([self.seed, epoch]).permutation(n)[pos])

    def source(self, i: int) -> tuple[int, int]:
        """(entry read, seed of the random transforms) of global sample ``i``."""
        return self.case_index(i), int(np.random.SeedSequence([self.seed, int(i)]).generate_state(1)[0])

    def in_context(self, k: int, seed: int) -> dict:
        """Entry ``k`` prepared, and with ``host_context`` a labelled case smaller than the patch pasted
        into a host drawn by the sample's ``seed``."""
        case = self.prepared(k)
        if self.host_context is None or not self.host_ids or self.entries[k].get(ROLE) == HOST:
            return case
        rng = np.random.default_rng([seed, 11])
        host = self.prepared(self.host_ids[int(rng.integers(len(self.host_ids)))])
        pasted = paste_into_host(case, host, self.host_context[0], self.host_context[1], rng)
        return case if pasted is None else pasted

    def __getitem__(self, i: int):
        k, seed = self.source(i)
        case = self.in_context(k, seed)
        self.rand.set_random_state(seed=seed)
        out = self.rand(dict(case))
        return out if isinstance(out, list) else [out]

    def __getitems__(self, indices: list[int]) -> list[list[dict]]:
        """``[self[i] for i in indices]``, with the synthesis step run once on all their patches."""
        if self.synth is None:
            return [self[i] for i in indices]
        samples, rngs = [], []
        for i in indices:
            k, seed = self.source(i)
            case = self.in_context(k, seed)
            self.rand.set_random_state(seed=seed)
            out = self.rand_head(dict(case))
            out = out if isinstance(out, list) else [out]
            rngs += [self.synth.next_rng() for _ in out]  # in patch order, as the mapped step draws them
            samples.append(out)
        done = iter(self.synth.synthesize_many([p for s in samples for p in s], rngs))
        return [[next(done) for _ in s] for s in samples]


class MixedStepDataset(StepDataset):
    """Step-indexed samples drawn from labelled and unlabelled entries.

    Sample ``i`` comes from the labelled pool with probability ``fraction``
    (seeded by ``(seed, i)``), then a case of that pool is drawn uniformly.
    """

    def __init__(self, labelled: list[dict], unlabelled: list[dict], transform, seed: int,
                 fraction: float, cache: bool = False):
        super().__init__(with_role(labelled, LABELLED) + with_role(unlabelled, HOST), transform, seed, cache)
        self.n_lab, self.n_unl = len(labelled), len(unlabelled)
        self.fraction = float(fraction)

    def case_index(self, i: int) -> int:
        rng = np.random.default_rng([self.seed, int(i), 7])
        use_lab = self.n_unl == 0 or (self.n_lab > 0 and rng.random() < self.fraction)
        return int(rng.integers(self.n_lab)) if use_lab else self.n_lab + int(rng.integers(self.n_unl))


class SharedStepDataset(StepDataset):
    """Step-indexed samples with a fixed share of labelled samples in every step (``data.labelled_share``).

    Global sample ``i = s * batch + p`` (``s`` the step of one rank, ``p`` the position in its batch):
    the first ``n_lab = round(share * batch)`` positions (at least 1, at most ``batch - 1``) read
    labelled cases, the others hosts. With ``share = 1`` every position reads a labelled case: the hosts
    are only the context that ``data.crop_placement: host`` pastes small labelled cases into. Labelled sample ``j = s * n_lab + p`` reads the entry and the
    transform seed that sample ``j`` of a :class:`StepDataset` of the labelled cases alone reads, so
    a labelled-only run with ``train.batch_size = n_lab`` sees exactly the same labelled patches at
    every step: the runs differ only by the host samples added. Hosts are drawn from their own
    seeded epochs.

    Example:
        >>> from monai.transforms import Compose
        >>> ds = SharedStepDataset([{"image": "a"}], [{"image": "h1"}, {"image": "h2"}], Compose([]), 0, 0.5, 2)
        >>> [ds.entries[ds.source(i)[0]]["role"] for i in range(4)]
        ['labelled', 'host', 'labelled', 'host']
        >>> ds.source(2)[1] == StepDataset([{"image": "a"}], Compose([]), 0).source(1)[1]
        True
    """

    def __init__(self, labelled: list[dict], hosts: list[dict], transform, seed: int, share: float, batch: int,
                 cache: bool = False, host_context: tuple | None = None):
        if not labelled or not hosts:
            raise ConfigError("data.labelled_share needs labelled and unlabelled cases")
        if batch < 2 and share < 1.0:
            raise ConfigError(f"data.labelled_share below 1 needs train.batch_size of at least 2 (one labelled and "
                              f"one host sample per step), got {batch}")
        super().__init__(with_role(labelled, LABELLED) + with_role(hosts, HOST), transform, seed, cache, host_context)
        self.n_lab, self.n_host = len(labelled), len(hosts)
        self.batch = int(batch)
        # share 1: labelled samples only (the hosts are only the context of data.crop_placement: host)
        self.k = self.batch if share >= 1.0 else min(self.batch - 1, max(1, int(round(float(share) * self.batch))))

    @property
    def share(self) -> float:
        """The labelled share of every step's samples."""
        return self.k / self.batch

    def source(self, i: int) -> tuple[int, int]:
        s, p = divmod(int(i), self.batch)
        if p < self.k:
            j = s * self.k + p
            epoch, pos = divmod(j, self.n_lab)
            k = int(np.random.default_rng([self.seed, epoch]).permutation(self.n_lab)[pos])
            return k, int(np.random.SeedSequence([self.seed, j]).generate_state(1)[0])
        j = s * (self.batch - self.k) + (p - self.k)
        epoch, pos = divmod(j, self.n_host)
        k = self.n_lab + int(np.random.default_rng([self.seed, epoch, 2]).permutation(self.n_host)[pos])
        return k, int(np.random.SeedSequence([self.seed, j, 2]).generate_state(1)[0])


def with_role(entries: list[dict], role: str) -> list[dict]:
    """Copies of ``entries`` with ``role`` set (``labelled`` or ``host``), unless they have one."""
    return [e if ROLE in e else {**e, ROLE: role} for e in entries]


def labelled_share(batch: dict) -> tuple[int, int]:
    """(labelled patches, patches) of a collated batch; patches without a role count as labelled."""
    roles = batch.get(ROLE)
    n = int(torch.as_tensor(batch["label"]).shape[0])
    if roles is None:
        return n, n
    return sum(1 for r in roles if r != HOST), n


class StepBatches(torch.utils.data.Sampler):
    """Batches of global sample indices for steps ``start..stop-1`` of one rank.

    Example:
        >>> list(StepBatches(1, 3, batch=2, world=2, rank=1))
        [[6, 7], [10, 11]]
    """

    def __init__(self, start: int, stop: int, batch: int, world: int, rank: int):
        self.start, self.stop, self.batch, self.world, self.rank = start, stop, batch, world, rank

    def __iter__(self):
        for step in range(self.start, self.stop):
            base = (step * self.world + self.rank) * self.batch
            yield list(range(base, base + self.batch))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def collate(batch: list[list[dict]]) -> dict:
    """One batch from a list of samples, each a list of patches (every patch is a batch item)."""
    return list_data_collate([patch for sample in batch for patch in sample])


def batch_tensors(batch: dict, device, keys=("image", "label")) -> list[torch.Tensor]:
    """Plain tensors (not MetaTensors) of a collated batch, on ``device``."""
    out = []
    for k in keys:
        v = batch[k].to(device)
        out.append(v.as_tensor() if hasattr(v, "as_tensor") else v)
    return out


def loader_workers(cfg, synthesis=None) -> int:
    """The data-loader workers of a training run: ``data.num_workers``, or when that is null
    (automatic) 1 if the online ``synthesis`` transform runs a network (generator or QC
    segmentor) on the CPU of a machine with at least 2 cores, else 0.

    One worker overlaps synthesis with the trainer's step: on 2 cores the step with generator
    synthesis and QC costs 1.13x the plain step with it, 1.44x without
    (``benchmarks/bench_train.py --only-synthesis --quick``). Networks on a GPU stay in the main
    process (CUDA does not survive the worker's fork; GPU forwards are short), as does a run
    without networks (a worker costs the plain step about 7 %).
    """
    if cfg.data.num_workers is not None:
        return int(cfg.data.num_workers)
    if synthesis is None or (os.cpu_count() or 1) < 2:
        return 0
    devices = []
    if getattr(synthesis, "generator", None) is not None:
        devices.append(synthesis.generator.device)
    qc = getattr(synthesis, "qc", None)
    if qc is not None and qc.model is not None:
        devices.append(qc.device)
    return 1 if devices and all(torch.device(d).type == "cpu" for d in devices) else 0
