"""Training and evaluation batches, built so that an accelerator never waits for them.

Three things make a batch cheap (issue 19):

* **Window first.** A sample is cut out of the cache's memory-mapped float16 HU / uint8 arrays
  *before* anything is converted, so only the patch (64x64x32 of an 80x80x40 crop at 1 mm,
  half the voxels) is read and converted. Batches leave the loader still in the cache's
  dtypes (float16 HU, uint8 mask): half and a quarter of the bytes of float32 to copy to the
  device. :func:`to_model_input` then converts and normalises on the device the model runs on.
* **In parallel.** :class:`TrainBatches` puts :class:`PatchDataset` behind a
  ``torch.utils.data.DataLoader`` with ``data.num_workers`` worker processes (persistent,
  prefetching, pinned memory on CUDA), so batch preparation overlaps the device's step.
* **Or not at all on the host.** With ``data.on_device: true`` the whole training split's
  crops are copied to the device once (:class:`DeviceCrops`, 0.48 GB at 1 mm) and every batch
  is a single gather there: no host work, no host-to-device copy per step.

Reproducibility. The order of an epoch is a permutation drawn from ``(seed, epoch)``; the
window offset and flips of a sample are drawn from ``(seed, epoch, row)`` alone
(:func:`sample_draws`). So a batch is the same whichever worker builds it, however many
workers there are, on the host or on the device, and a run resumed at epoch ``e`` draws what
an uninterrupted run would.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch

from benchmark.data.augment import gather_windows, window_slices

__all__ = ["resolve_num_workers", "epoch_permutation", "sample_draws", "CropFiles", "PatchDataset",
           "EpochBatchSampler", "DeviceCrops", "TrainBatches", "center_batches", "to_model_input",
           "normalise_hu_tensor"]

#: batches each loader worker keeps ready (DataLoader's prefetch_factor)
PREFETCH_BATCHES = 4
#: "auto" never starts more workers than this per process: beyond it, batch preparation for one
#: device is already far ahead of the model (docs/performance.md, section 2)
MAX_AUTO_WORKERS = 8


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def resolve_num_workers(setting: Union[str, int], device_type: str, local_world: int = 1) -> int:
    """``data.num_workers`` as a number of worker processes (0 = batches built in-process).

    ``"auto"``: none when training on the CPU (the model's own threads use every core, and a
    window-first batch costs well under 1 % of a CPU step, so workers would only compete with
    it); on an accelerator, the cores available to this process's share of the machine minus
    one for the training loop itself, at most ``MAX_AUTO_WORKERS``.
    """
    if setting != "auto":
        return int(setting)
    if device_type == "cpu":
        return 0
    per_process = usable_cores() // max(1, local_world)
    return max(0, min(MAX_AUTO_WORKERS, per_process - 1))


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the ``n`` training samples in epoch ``epoch``."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).numpy()


_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit hash of ``x``."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_draws(seed: int, epoch: int, row: int, crop_zyx: Sequence[int], patch_zyx: Sequence[int],
                 flip: bool = True) -> tuple[tuple[int, int, int], tuple[bool, bool]]:
    """Window offset (z, y, x), uniform in [0, crop - patch] per axis, and (flip x, flip y) of
    one training sample, from (seed, epoch, row) only.

    A counter-based hash rather than a seeded generator: a few microseconds per sample instead
    of the ~100 us of building a numpy generator, and (the point) the same draws wherever and in
    whatever order the sample is made. The modulo bias is below 1e-17 (spans of at most ~100).
    """
    key = _mix64(_mix64(_mix64(seed & _MASK64) ^ (epoch & _MASK64)) ^ (row & _MASK64))
    offset = []
    for c, p in zip(crop_zyx, patch_zyx):
        key = _mix64(key)
        offset.append(key % (int(c) - int(p) + 1))
    key = _mix64(key)
    flips = (bool(key & 1), bool(key & 2)) if flip else (False, False)
    return (offset[0], offset[1], offset[2]), flips


def normalise_hu_tensor(hu: torch.Tensor, window: Sequence[float]) -> torch.Tensor:
    """float32 in [0, 1]: HU clipped to ``window`` and mapped linearly (as ``store.normalise_hu``,
    value for value, on whichever device ``hu`` is)."""
    lo, hi = float(window[0]), float(window[1])
    return hu.to(torch.float32, copy=True).sub_(lo).div_(hi - lo).clamp_(0.0, 1.0)   # never in place


def to_model_input(images: torch.Tensor, masks: torch.Tensor, device: torch.device, hu_window: Sequence[float],
                   channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A raw batch (float16 HU, uint8 mask; host or device) as the model's float32 input on ``device``.

    The copy is asynchronous (pinned host memory on CUDA); conversion and normalisation run on
    the device, after the copy of the smaller raw dtypes.
    """
    images = normalise_hu_tensor(images.to(device, non_blocking=True), hu_window)
    masks = masks.to(device, non_blocking=True).float()
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last_3d)
        masks = masks.contiguous(memory_format=torch.channels_last_3d)
    return images, masks


class CropFiles:
    """The cache arrays of a :class:`~benchmark.data.store.CropStore`, opened lazily.

    Picklable without its data (a worker process re-opens the memory maps; pickling an open
    ``np.memmap`` would copy the whole array into the message).
    """

    def __init__(self, store):
        self.path = Path(store.path)
        self.file_rows = None if store.file_rows is None else np.asarray(store.file_rows, dtype=np.int64)
        self.crop_zyx = tuple(int(v) for v in store.images.shape[1:])
        self.hu_window = tuple(store.hu_window)
        self._images = self._gt = None

    def __getstate__(self):
        return {**self.__dict__, "_images": None, "_gt": None}

    def _open(self):
        if self._images is None:
            self._images = np.load(self.path / "images.npy", mmap_mode="r")
            self._gt = np.load(self.path / "gt.npy", mmap_mode="r")

    def file_row(self, row: int) -> int:
        return int(row) if self.file_rows is None else int(self.file_rows[row])

    def window(self, row: int, offset: Sequence[int], patch_zyx: Sequence[int],
               flips: tuple[bool, bool] = (False, False)) -> tuple[torch.Tensor, torch.Tensor]:
        """(HU float16 (Z, Y, X), mask uint8 (Z, Y, X)) of one window of store row ``row``."""
        self._open()
        sl = (self.file_row(row),) + window_slices(offset, patch_zyx)
        image = torch.from_numpy(np.ascontiguousarray(self._images[sl]))
        mask = torch.from_numpy(np.ascontiguousarray(self._gt[sl]))
        dims = [d for d, f in zip((-1, -2), flips) if f]   # x, then y
        if dims:
            image, mask = image.flip(dims), mask.flip(dims)
        return image, mask

    def all_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whole crops (HU float16, uint8) of store rows ``rows``, read in file order."""
        self._open()
        file_rows = np.array([self.file_row(r) for r in rows], dtype=np.int64)
        order = np.argsort(file_rows, kind="stable")
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        images = np.asarray(self._images[file_rows[order]])[inverse]
        gt = np.asarray(self._gt[file_rows[order]])[inverse]
        return images, gt


class PatchDataset(torch.utils.data.Dataset):
    """Samples ``(image HU float16 (1, Z, Y, X), mask uint8 (1, Z, Y, X), store row)``.

    Indexed by ``(epoch, i)`` (what :class:`EpochBatchSampler` yields: the epoch travels with
    the index, so workers that hold a copy of the dataset need no per-epoch update) or by a
    plain ``i`` (uses the epoch set by :meth:`set_epoch`). ``train``: the window and flips of
    :func:`sample_draws`; otherwise the centre window.
    """

    def __init__(self, store, rows, patch_zyx: Sequence[int], train: bool, seed: int = 0):
        self.files = store if isinstance(store, CropFiles) else CropFiles(store)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.patch_zyx = tuple(int(p) for p in patch_zyx)
        self.train = train
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, key):
        epoch, i = key if isinstance(key, tuple) else (self.epoch, key)
        row = int(self.rows[i])
        if self.train:
            offset, flips = sample_draws(self.seed, epoch, row, self.files.crop_zyx, self.patch_zyx)
        else:
            offset, flips = center_offset(self.files.crop_zyx, self.patch_zyx), (False, False)
        image, mask = self.files.window(row, offset, self.patch_zyx, flips)
        return image[None], mask[None], row


def center_offset(crop_zyx: Sequence[int], patch_zyx: Sequence[int]) -> tuple[int, int, int]:
    return tuple((c - p) // 2 for c, p in zip(crop_zyx, patch_zyx))


def steps_per_epoch(n_rows: int, batch_size: int, max_steps: Optional[int]) -> int:
    """Whole batches in one pass (one short batch when the split is smaller than a batch)."""
    n = n_rows // batch_size if n_rows >= batch_size else 1
    return min(n, max_steps) if max_steps else n


class EpochBatchSampler(torch.utils.data.Sampler):
    """Batches of ``(epoch, dataset index)`` for one epoch at a time (:meth:`set_epoch`).

    The global batch is the same whatever the number of ranks; each rank keeps its interleaved
    share (``[rank::world]``), so DDP's averaged gradient equals the single-process one.
    """

    def __init__(self, n_rows: int, batch_size: int, seed: int, max_steps: Optional[int] = None,
                 rank: int = 0, world: int = 1):
        self.n_rows, self.batch_size, self.seed = n_rows, batch_size, seed
        self.steps = steps_per_epoch(n_rows, batch_size, max_steps)
        self.rank, self.world = rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self):
        return self.steps

    def batch_indices(self, epoch: int) -> list[np.ndarray]:
        perm = epoch_permutation(self.seed, epoch, self.n_rows)
        return [perm[b * self.batch_size:(b + 1) * self.batch_size][self.rank::self.world]
                for b in range(self.steps)]

    def __iter__(self):
        epoch = self.epoch
        for idx in self.batch_indices(epoch):
            yield [(epoch, int(i)) for i in idx]


class DeviceCrops:
    """Whole crops of some store rows held on ``device`` (float16 HU, uint8 masks); batches are
    cut, flipped and (by :func:`to_model_input`) normalised there, with the same draws as
    :class:`PatchDataset`. Each epoch's offsets and flips go to the device in one copy."""

    def __init__(self, store, rows: np.ndarray, patch_zyx: Sequence[int], seed: int, device: torch.device):
        files = CropFiles(store)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.patch_zyx = tuple(int(p) for p in patch_zyx)
        self.crop_zyx = files.crop_zyx
        self.seed, self.device = int(seed), device
        images, gt = files.all_rows(self.rows)
        self.images = torch.from_numpy(images).to(device)
        self.gt = torch.from_numpy(gt).to(device)

    def nbytes(self) -> int:
        return self.images.nbytes + self.gt.nbytes

    def epoch_batches(self, batches: list[np.ndarray], epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``batches``: dataset indices per step (from :meth:`EpochBatchSampler.batch_indices`)."""
        plan = []   # per sample: index, offset z, y, x, flip x, flip y
        for idx in batches:
            for i in idx:
                offset, flips = sample_draws(self.seed, epoch, int(self.rows[i]), self.crop_zyx, self.patch_zyx)
                plan.append((int(i), *offset, *flips))
        host = torch.tensor(plan, dtype=torch.int64).reshape(-1, 6)
        if self.device.type == "cuda":
            host = host.pin_memory()
        plan_d = host.to(self.device, non_blocking=True)
        start = 0
        for idx in batches:
            p = plan_d[start:start + len(idx)]
            start += len(idx)
            yield (gather_windows(self.images, p[:, 0], p[:, 1:4], p[:, 4:6].bool(), self.patch_zyx),
                   gather_windows(self.gt, p[:, 0], p[:, 1:4], p[:, 4:6].bool(), self.patch_zyx))


class TrainBatches:
    """An epoch's raw training batches ``(HU float16 (B, 1, Z, Y, X), mask uint8)`` for one rank.

    Built once per run: the DataLoader's worker processes persist across epochs. Where the
    batches come from follows ``data.on_device`` and ``data.num_workers`` (see the module
    docstring); every way gives the same batches.
    """

    def __init__(self, store, rows: np.ndarray, data_cfg, batch_size: int, seed: int,
                 max_steps: Optional[int], device: torch.device, rank: int = 0, world: int = 1,
                 local_world: int = 1):
        self.rows = np.asarray(rows, dtype=np.int64)
        self.sampler = EpochBatchSampler(len(self.rows), batch_size, seed, max_steps, rank, world)
        self.on_device = bool(data_cfg.on_device)
        self.num_workers = 0 if self.on_device else resolve_num_workers(data_cfg.num_workers, device.type,
                                                                         local_world)
        if self.on_device:
            self.device_crops = DeviceCrops(store, self.rows, data_cfg.patch_zyx, seed, device)
            self.loader = None
            return
        self.dataset = PatchDataset(store, self.rows, data_cfg.patch_zyx, train=True, seed=seed)
        workers = self.num_workers
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=self.sampler, num_workers=workers,
            collate_fn=_collate, pin_memory=device.type == "cuda",
            persistent_workers=workers > 0, prefetch_factor=PREFETCH_BATCHES if workers else None,
            # spawned, like the data stages' pool (benchmark/data/pool.py says why not forked)
            multiprocessing_context="spawn" if workers else None)

    def __len__(self):
        return len(self.sampler)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.set_epoch(epoch)
        if self.on_device:
            return self.device_crops.epoch_batches(self.sampler.batch_indices(epoch), epoch)
        if self.num_workers:
            from benchmark.data.pool import without_callers_main
            with without_callers_main():   # spawned workers start here (first epoch only)
                it = iter(self.loader)
            return it
        return iter(self.loader)


def _collate(samples):
    images, masks, _ = zip(*samples)
    return torch.stack(images), torch.stack(masks)


def center_batches(store, rows: np.ndarray, batch_size: int, patch_zyx: Sequence[int]):
    """``(rows, image float32 in [0, 1] (B, 1, Z, Y, X), mask float32)`` of the centre windows,
    in the order of ``rows`` (validation, evaluation)."""
    files = CropFiles(store)
    offset = center_offset(files.crop_zyx, patch_zyx)
    for i in range(0, len(rows), batch_size):
        sel = np.asarray(rows[i:i + batch_size])
        pairs = [files.window(int(r), offset, patch_zyx) for r in sel]
        images = normalise_hu_tensor(torch.stack([p[0] for p in pairs])[:, None], files.hu_window)
        masks = torch.stack([p[1] for p in pairs])[:, None].float()
        yield sel, images, masks
