"""Cost measurement: parameter and MAC counts against closed forms, latency and memory sanity.

No timing thresholds: latency is only checked to be a positive, ordered pair of numbers.
"""
from __future__ import annotations

import math
import subprocess
import sys

import pytest

from conftest import ROOT
import torch
from torch import nn

from benchmark.run.cost import count_macs, count_parameters, measure_latency, peak_memory

torch.set_num_threads(1)

CUDA = torch.cuda.is_available()


def _out_size(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def test_parameters_of_linear():
    assert count_parameters(nn.Linear(7, 3)) == 7 * 3 + 3
    assert count_parameters(nn.Linear(7, 3, bias=False)) == 21
    frozen = nn.Linear(7, 3)
    frozen.weight.requires_grad_(False)
    assert count_parameters(frozen) == 24 and count_parameters(frozen, trainable_only=True) == 3


def test_shared_parameters_counted_once():
    layer = nn.Linear(4, 4)
    assert count_parameters(nn.Sequential(layer, nn.ReLU(), layer)) == 20


@pytest.mark.parametrize("cin, cout, kernel, stride, padding, groups, shape", [
    (3, 5, (3, 3, 3), 1, 1, 1, (2, 3, 4, 6, 8)),
    (4, 8, (1, 3, 3), 2, 0, 2, (1, 4, 5, 9, 11)),
    (1, 16, (2, 2, 2), 2, 0, 1, (1, 1, 8, 16, 16)),
])
def test_macs_of_conv3d_match_closed_form(cin, cout, kernel, stride, padding, groups, shape):
    conv = nn.Conv3d(cin, cout, kernel, stride=stride, padding=padding, groups=groups)
    out_spatial = [_out_size(n, k, stride, padding) for n, k in zip(shape[2:], kernel)]
    # every output voxel of every output channel: (cin / groups) * prod(kernel) multiply-adds
    expected = shape[0] * cout * math.prod(out_spatial) * (cin // groups) * math.prod(kernel)
    assert count_macs(conv, shape) == expected


def test_macs_of_a_small_network_add_up_and_restore_mode():
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(),
                        nn.ConvTranspose3d(4, 2, 2, stride=2))
    net.train()
    shape = (1, 1, 4, 6, 6)
    conv = 4 * (4 * 6 * 6) * 1 * 27
    tconv = 4 * (4 * 6 * 6) * 2 * 8       # each input voxel scatters into 2 channels x 8 outputs
    assert count_macs(net, shape) == conv + tconv
    assert net.training


def test_macs_with_deep_supervision_outputs():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv3d(1, 1, 1)
            self.b = nn.Conv3d(1, 1, 3, padding=1)

        def forward(self, x):
            return [self.a(x), self.b(x)]

    assert count_macs(TwoHeads(), (1, 1, 2, 3, 4)) == 24 * 1 + 24 * 27


def test_latency_returns_positive_numbers():
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 1, 1))
    net.train()
    result = measure_latency(net, (1, 1, 8, 16, 16), repeats=5, warmup=1)
    assert set(result) == {"median_ms", "p90_ms"}
    assert 0 < result["median_ms"] <= result["p90_ms"] and math.isfinite(result["p90_ms"])
    assert net.training
    with pytest.raises(ValueError):
        measure_latency(net, (1, 1, 8, 16, 16), repeats=0)
    with pytest.raises(ValueError, match="input_shape"):
        measure_latency(net, (16, 16), repeats=1)


class _Allocates(nn.Module):
    """Returns a freshly written float32 tensor of `mib` MiB, whatever the input."""

    def __init__(self, mib: int):
        super().__init__()
        self.n = mib * 2 ** 20 // 4

    def forward(self, x):
        return torch.ones(self.n) * x.mean()


@pytest.mark.slow
def test_peak_memory_cpu_sees_a_large_allocation():
    # 64 MiB is above glibc's largest mmap threshold, so the pages are fresh and raise the RSS.
    # Measured in a fresh process: the test session's own RSS moves with whatever earlier tests
    # left behind (threads, caches being freed), which is not what this checks.
    code = ("import torch, torch.nn as nn; from benchmark.run.cost import peak_memory\n"
            "class A(nn.Module):\n"
            "    def forward(self, x):\n"
            "        return torch.ones(64 * 2 ** 20 // 4) * x.mean()\n"
            "print(peak_memory(A(), (1, 1, 4, 4, 4), device='cpu'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert float(out.stdout.strip().splitlines()[-1]) >= 60


def test_peak_memory_training_pass_leaves_the_model_as_it_was():
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.Conv3d(4, 1, 1))
    net.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    weights_mib = sum(p.numel() * 4 for p in net.parameters()) / 2 ** 20
    mib = peak_memory(net, (2, 1, 8, 16, 16), device="cpu", training=True)
    assert mib > weights_mib and math.isfinite(mib)
    assert not net.training
    assert all(p.grad is None for p in net.parameters())
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_latency_and_memory_and_model_stays_home():
    net = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 1, 1))
    shape = (1, 1, 16, 32, 32)
    result = measure_latency(net, shape, repeats=5, warmup=2, device="cuda")
    assert 0 < result["median_ms"] <= result["p90_ms"]
    # the output alone is 1*16*32*32 floats and the hidden map 8x that
    mib = peak_memory(net, shape, device="cuda")
    assert mib >= 9 * 16 * 32 * 32 * 4 / 2 ** 20
    assert count_macs(net, shape, device="cuda") == count_macs(net, shape)
    assert next(net.parameters()).device.type == "cpu"
