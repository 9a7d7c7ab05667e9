"""Training-step time of registered architectures, side by side in one process (like for like).

    OMP_WAIT_POLICY=PASSIVE python perf/time_train_steps.py [--preset cpu] [--threads 1] \
        [--steps 4] [--rounds 3] ARCH [ARCH ...]

Each architecture is built as `bench run` builds it (``build_model``, with the committed genotype
of a searched one), with its loss and optimiser, and trained on one synthetic batch of the
preset's batch size and patch. The architectures take turns, round by round, so load from other
work on the machine falls on all of them alike; the median step of each is printed with its
ratio to the first architecture's. What the ratios are for: scaling a protocol's declared
``seconds_per_epoch`` for a network that changed (a new search) from an architecture measured on
the reference machine, until the protocol's own runs measure it (docs/protocol.md).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmark.run.config import build_config
from benchmark.run.train import build_loss, build_model, build_optimizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("archs", nargs="+")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=4, help="timed steps per architecture and round")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    setups = {}
    for arch in a.archs:
        cfg = build_config(a.preset, [], **{"model.arch": arch})
        model = build_model(cfg).train()
        x = torch.randn(cfg.train.batch_size, 1, *cfg.data.patch_zyx)
        y = (torch.rand_like(x) > 0.9).float()
        setups[arch] = (model, build_loss(cfg, model), build_optimizer(cfg, model.parameters()), x, y)
    print(f"preset {a.preset}, batch {x.shape[0]}, patch {tuple(x.shape[2:])}, {a.threads} thread(s), "
          f"{a.rounds} rounds x {a.steps} steps, synthetic data, fp32")
    times: dict = {arch: [] for arch in a.archs}
    for _ in range(a.rounds):
        for arch, (model, loss_fn, opt, x, y) in setups.items():
            for step in range(a.steps + 1):          # the first step of a round warms up
                t = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                loss_fn(model(x), y).backward()
                opt.step()
                if step:
                    times[arch].append(time.perf_counter() - t)
    ref = statistics.median(times[a.archs[0]])
    print(f"{'architecture':16s} {'median s/step':>14s} {'x ' + a.archs[0]:>12s}")
    for arch, ts in times.items():
        med = statistics.median(ts)
        print(f"{arch:16s} {med:14.3f} {med / ref:12.2f}")


if __name__ == "__main__":
    main()
