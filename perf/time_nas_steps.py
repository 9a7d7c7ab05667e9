"""Seconds per architecture-search step at the cpu preset, on synthetic tensors (no data needed).

    OMP_WAIT_POLICY=PASSIVE python perf/time_nas_steps.py [STEPS]

A DiNTS search step (one weight step and one architecture step of the 6 x 3 TopologySearch at
channel_mul 0.25) and a BiX-Net candidate training step, batch and patch of the cpu preset.
CPU seconds are what a search budget counts; OMP_WAIT_POLICY=PASSIVE keeps OpenMP threads from
spinning (counted as CPU time) when the machine is shared. docs/nas.md turns these into costs.
"""
import sys
import time

import torch
from monai.networks.nets import DiNTS, TopologySearch

from architectures._layers import PadToMultiple
from benchmark.campaigns.dints_search import RAM_TARGET, W_LR, A_LR, _arch_loss_terms
from benchmark.run.config import build_config
from benchmark.run.train import build_loss, build_model, build_optimizer

torch.set_num_threads(2)
torch.manual_seed(0)
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
cfg = build_config("cpu", [], **{"model.arch": "dints"})
x = torch.randn(cfg.train.batch_size, 1, *cfg.data.patch_zyx)
y = (torch.rand_like(x) > 0.9).float()

space = TopologySearch(channel_mul=0.25, num_blocks=6, num_depths=3, use_downsample=True, spatial_dims=3)
model = PadToMultiple(DiNTS(dints_space=space, in_channels=1, num_classes=1, use_downsample=True), 16)
loss_fn = build_loss(cfg, model)
arch = [space.log_alpha_a, space.log_alpha_c]
weights = [p for p in model.parameters() if all(p is not a for a in arch)]
opt_w = torch.optim.SGD(weights, lr=W_LR, momentum=0.9)
opt_a = torch.optim.Adam(arch, lr=A_LR, betas=(0.5, 0.999))


def dints_step():
    opt_w.zero_grad(); loss_fn(model(x), y).backward(); opt_w.step()
    opt_a.zero_grad()
    e_a, e_c, ram, topo = _arch_loss_terms(space, x.shape, RAM_TARGET)
    (loss_fn(model(x), y) + e_a + e_c + ram + 0.001 * topo).backward(); opt_a.step()


def timed(fn, n):
    """(CPU seconds, wall seconds) per call: the CPU seconds of this process (both threads) are
    what a search's budget counts, and what a shared machine does not inflate."""
    fn()   # warm-up
    c, t = time.process_time(), time.perf_counter()
    for _ in range(n):
        fn()
    return (time.process_time() - c) / n, (time.perf_counter() - t) / n


s_d = timed(dints_step, steps)
bcfg = build_config("cpu", [], **{"model.arch": "bixnas"})
bnet = build_model(bcfg)
bloss = build_loss(bcfg, bnet)
bopt = build_optimizer(bcfg, bnet.parameters())


def bix_step():
    bopt.zero_grad(); bloss(bnet(x), y).backward(); bopt.step()


s_b = timed(bix_step, steps)
spe = cfg.train.steps_per_epoch
for name, (cpu, wall) in (("dints search step (weight + architecture)", s_d), ("bixnas candidate training step", s_b)):
    print(f"{name}, cpu preset: {cpu:.2f} CPU s ({wall:.2f} s wall on this machine) -> {cpu * spe:.0f} CPU s "
          f"per epoch of {spe} steps")
