"""What a model costs: parameters, MACs per patch, inference latency and peak memory.

Conventions (so numbers in the leaderboard mean the same thing for every architecture):

* ``input_shape`` is a full tensor shape (B, C, D, H, W); pass B = 1 for "per patch".
* MACs come from PyTorch's own ``torch.utils.flop_counter.FlopCounterMode`` during one real
  forward pass in eval mode without gradients; it counts the matrix-multiply-like ops
  (convolutions incl. transposed, linear/matmul, batched matmul, scaled-dot-product attention)
  and reports FLOPs = 2 x multiply-accumulates, so MACs = FLOPs / 2. Element-wise ops, norms,
  activations, pooling and interpolation are not counted, as in the usual papers' tables.
* Latency is wall time of a forward pass in eval mode under ``torch.no_grad()``, after
  ``warmup`` untimed passes, with ``torch.cuda.synchronize()`` around each timed pass on CUDA.
  Report the median; p90 shows the spread. Nothing here sets thread counts: the caller's
  ``torch.set_num_threads`` applies.
* Peak memory (MiB) of one forward pass (forward + backward with ``training=True``):
    - CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak counter, i.e. all
      tensor memory on the device at the peak, weights and input included (not the caching
      allocator's reserved-but-unused blocks).
    - CPU: the process's resident set size (psutil) sampled every millisecond in a thread
      during the pass, its maximum minus the RSS just before the pass, plus the bytes of the
      model's parameters/buffers and of the input (resident before the pass began), so the
      figure means roughly what the CUDA one means. It is an approximation: memory the
      allocator already holds from earlier passes is reused without raising the RSS (so it
      can under-count; a first call in a fresh process is the most faithful), a spike shorter
      than the sampling period can be missed, and non-tensor memory (library scratch
      buffers) is included.

Each function puts the model in the needed mode (and on ``device`` if given) and restores its
training flag and device afterwards. ``peak_memory(training=True)`` also restores the buffers
(BatchNorm running statistics) its training-mode pass updated and clears the gradients it
produced (``.grad`` is None afterwards).
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from typing import Sequence

import numpy as np
import psutil
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_parameters", "count_macs", "measure_latency", "peak_memory"]

_MIB = 2 ** 20


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only))


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(n) for n in input_shape)
    if len(shape) < 3 or any(n < 1 for n in shape):
        raise ValueError(f"input_shape must be a full (B, C, *spatial) shape of positive sizes, got {input_shape}")
    return shape


@contextmanager
def _placed(model: nn.Module, device, train: bool):
    """Model in train/eval mode on `device` (default: where it is) for the block, then restored."""
    was_training, home = model.training, _model_device(model)
    target = home if device is None else torch.device(device)
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", torch.cuda.current_device())
    model.to(target)
    model.train(train)
    try:
        yield target
    finally:
        model.train(was_training)
        model.to(home)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_macs(model: nn.Module, input_shape: Sequence[int], device=None) -> int:
    """Multiply-accumulates of one forward pass on a zero input of `input_shape` (see module doc)."""
    shape = _check_shape(input_shape)
    with _placed(model, device, train=False) as dev, torch.no_grad():
        x = torch.zeros(shape, device=dev)
        counter = FlopCounterMode(display=False)
        # FlopCounterMode sees no FLOPs inside the fused CPU attention kernels; the math
        # backend decomposes attention into matmuls it can count.
        from torch.nn.attention import SDPBackend, sdpa_kernel
        with sdpa_kernel(SDPBackend.MATH), counter:
            model(x)
    return int(counter.get_total_flops() // 2)


def measure_latency(model: nn.Module, input_shape: Sequence[int], repeats: int = 10, warmup: int = 2,
                    device=None) -> dict:
    """Forward-pass wall time in ms: ``{"median_ms", "p90_ms"}`` over `repeats` timed passes."""
    shape = _check_shape(input_shape)
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    gen = torch.Generator().manual_seed(0)
    times = []
    with _placed(model, device, train=False) as dev, torch.no_grad():
        x = torch.randn(shape, generator=gen).to(dev)
        for _ in range(warmup):
            model(x)
        for _ in range(repeats):
            _sync(dev)
            start = time.perf_counter()
            model(x)
            _sync(dev)
            times.append((time.perf_counter() - start) * 1000.0)
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90))}


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _outputs(out):
    """Tensors of a model output (a tensor, or a list/tuple/dict of them for deep supervision)."""
    if torch.is_tensor(out):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for o in out for t in _outputs(o)] if isinstance(out, (list, tuple)) else []


class _RSSSampler(threading.Thread):
    def __init__(self, period_s: float = 0.001):
        super().__init__(daemon=True)
        self.proc = psutil.Process(os.getpid())
        self.period_s = period_s
        self.peak = self.proc.memory_info().rss
        self._stop_event = threading.Event()

    def sample(self) -> None:
        self.peak = max(self.peak, self.proc.memory_info().rss)

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            time.sleep(self.period_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.sample()


def peak_memory(model: nn.Module, input_shape: Sequence[int], device=None, training: bool = False) -> float:
    """Peak memory in MiB of one forward pass (plus backward when `training`); see module doc."""
    shape = _check_shape(input_shape)
    gen = torch.Generator().manual_seed(0)
    with _placed(model, device, train=training) as dev, torch.set_grad_enabled(training):
        saved_buffers = [b.detach().clone() for b in model.buffers()] if training else []
        x = torch.randn(shape, generator=gen).to(dev)
        if dev.type == "cuda":
            _sync(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            out = model(x)
            if training:
                sum(t.float().sum() for t in _outputs(out)).backward()
            _sync(dev)
            peak = torch.cuda.max_memory_allocated(dev)
        else:
            resident = _tensor_bytes(model.parameters()) + _tensor_bytes(model.buffers()) + _tensor_bytes([x])
            sampler = _RSSSampler()
            baseline = sampler.peak
            sampler.start()
            try:
                out = model(x)
                if training:
                    sum(t.float().sum() for t in _outputs(out)).backward()
            finally:
                sampler.stop()   # its last sample is taken while `out` is still alive
            peak = max(sampler.peak - baseline, 0) + resident
        del out
        if training:
            model.zero_grad(set_to_none=True)
            with torch.no_grad():
                for b, saved in zip(model.buffers(), saved_buffers):
                    b.copy_(saved)
    return peak / _MIB
