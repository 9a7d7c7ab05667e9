"""The training loader (benchmark/data/loader.py) and the sync-free training step (issue 19).

Every way of making batches (in-process, DataLoader workers, on the device) must give the same
batches for the same seed, and a training step must not wait for the device.
"""
from __future__ import annotations

import pytest
import torch

from benchmark.run.config import build_config
from benchmark.data.augment import gather_windows
from benchmark.data.loader import (EpochBatchSampler, PatchDataset, TrainBatches, center_batches,
                                   resolve_num_workers, to_model_input)
from benchmark.run.train import DistInfo, Trainer

SMOKE = ["model.kwargs.base_channels=4", "train.epochs=3"]


@pytest.fixture(scope="module")
def smoke():
    """The smoke preset's store (the shared crop cache: built once per machine)."""
    from benchmark.data.store import load_crops
    cfg = build_config("smoke", SMOKE, **{"model.arch": "unet3d"})
    return cfg, load_crops(cfg.data, progress=False)


def _epochs(cfg, store, epochs, **data):
    dcfg = cfg.data.model_copy(update=data)
    tb = TrainBatches(store, store.indices("train"), dcfg, cfg.train.batch_size, cfg.train.seed,
                      cfg.train.steps_per_epoch, torch.device("cpu"))
    return [[(x.clone(), m.clone()) for x, m in tb.epoch(e)] for e in epochs]


def _assert_same(a, b):
    assert len(a) == len(b) and all(len(ea) == len(eb) > 0 for ea, eb in zip(a, b))
    for ea, eb in zip(a, b):
        for (x, m), (y, n) in zip(ea, eb):
            assert x.dtype == torch.float16 and m.dtype == torch.uint8
            assert torch.equal(x, y) and torch.equal(m, n)


def test_gather_windows_is_slicing_and_flipping():
    vols = torch.arange(3 * 6 * 7 * 8).reshape(3, 6, 7, 8)
    index = torch.tensor([2, 0, 2])
    offsets = torch.tensor([[1, 2, 3], [0, 0, 0], [2, 1, 4]])
    flips = torch.tensor([[True, False], [False, True], [True, True]])   # (x, y)
    out = gather_windows(vols, index, offsets, flips, (4, 5, 4))
    assert out.shape == (3, 1, 4, 5, 4)
    for k in range(3):
        (z, y, x), i = offsets[k].tolist(), int(index[k])
        want = vols[i, z:z + 4, y:y + 5, x:x + 4]
        dims = [d for d, f in zip((-1, -2), flips[k].tolist()) if f]
        assert torch.equal(out[k, 0], want.flip(dims))


def test_sampler_ranks_share_the_global_batch():
    single = EpochBatchSampler(10, 4, seed=3, max_steps=None)
    single.set_epoch(5)
    shards = []
    for rank in range(2):
        s = EpochBatchSampler(10, 4, seed=3, max_steps=None, rank=rank, world=2)
        s.set_epoch(5)
        shards.append(list(s))
    glob = list(single)
    assert len(glob) == 2 and all(len(b) == 4 for b in glob)          # 10 // 4 whole batches
    for b, (r0, r1) in enumerate(zip(*shards)):
        assert r0 == glob[b][0::2] and r1 == glob[b][1::2]
        assert {e for e, _ in r0 + r1} == {5}
    # another epoch, another order
    single.set_epoch(6)
    assert [i for b in single for _, i in b] != [i for b in glob for _, i in b]


def test_auto_workers_none_on_cpu_some_on_gpu(monkeypatch):
    import benchmark.data.loader as L
    monkeypatch.setattr(L, "usable_cores", lambda: 16)
    assert resolve_num_workers("auto", "cpu") == 0
    assert resolve_num_workers("auto", "cuda") == L.MAX_AUTO_WORKERS
    assert resolve_num_workers("auto", "cuda", local_world=4) == 3
    assert resolve_num_workers(2, "cpu") == 2


def test_window_first_equals_normalising_the_whole_crop(smoke):
    cfg, store = smoke
    (oz, oy, ox), (pz, py, px) = ((c - p) // 2 for c, p in zip(store.images.shape[1:], cfg.data.patch_zyx)), \
        cfg.data.patch_zyx
    win = (slice(None), None, slice(oz, oz + pz), slice(oy, oy + py), slice(ox, ox + px))
    rows = store.indices("val")
    seen = 0
    for sel, images, masks in center_batches(store, rows, 3, cfg.data.patch_zyx):
        assert images.dtype == torch.float32 and torch.equal(images, torch.from_numpy(store.images[sel])[win])
        assert torch.equal(masks, torch.from_numpy(store.gt[sel]).float()[win])
        seen += len(sel)
    assert seen == len(rows)
    # the training path's normalisation (on the device) is the store's as well
    ds = PatchDataset(store, store.indices("train"), cfg.data.patch_zyx, train=False)
    hu, gt, row = ds[0]
    x, m = to_model_input(hu[None], gt[None], torch.device("cpu"), cfg.data.hu_window)
    assert torch.equal(x, torch.from_numpy(store.images[[row]])[win])
    assert torch.equal(m, torch.from_numpy(store.gt[[row]]).float()[win])


def test_on_device_batches_equal_loader_batches(smoke):
    """``data.on_device`` cuts batches with one gather (here on the CPU, the code a GPU runs)."""
    cfg, store = smoke
    _assert_same(_epochs(cfg, store, [0, 1], num_workers=0), _epochs(cfg, store, [0, 1], on_device=True))


@pytest.mark.slow
def test_worker_processes_give_the_in_process_batches(smoke):
    cfg, store = smoke
    in_process = _epochs(cfg, store, [0, 1, 4], num_workers=0)
    _assert_same(in_process, _epochs(cfg, store, [0, 1, 4], num_workers=2))
    # and the augmentation really varies between epochs
    assert not torch.equal(in_process[0][0][0], in_process[1][0][0])


SYNCING = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")
#: reads of tensors that live on the host whatever the training device, so never wait for it:
#: the optimiser's step counters (torch.optim keeps them on the host unless the optimiser is
#: fused, which the trainer uses on CUDA) and MONAI's Dice loss listing its reduction axes
#: from a torch.arange made on the host
HOST_ONLY = (("torch/optim/optimizer.py", "item"), ("monai/losses/dice.py", "tolist"))


def _host_reads(monkeypatch, trainer, steps):
    """How often a training epoch of ``steps`` steps reads a tensor's value back to the host
    (the calls that, on a GPU, wait for everything queued on it)."""
    import sys
    counts = {"n": 0}
    for name in SYNCING:
        orig = getattr(torch.Tensor, name)

        def counted(self, *a, _orig=orig, _name=name, **k):
            caller = sys._getframe(1).f_code.co_filename.replace("\\", "/")
            if not any(caller.endswith(f) and _name == n for f, n in HOST_ONLY):
                counts["n"] += 1
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    trainer.batches.sampler.steps = steps
    try:
        trainer.train_epoch(0, show_progress=True)
    finally:
        monkeypatch.undo()
    return counts["n"]


def test_no_host_sync_per_training_step(smoke, monkeypatch):
    cfg, store = smoke
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"batch_size": 2})})
    trainer = Trainer(cfg, store, torch.device("cpu"), DistInfo())
    few, more = _host_reads(monkeypatch, trainer, 1), _host_reads(monkeypatch, trainer, 3)
    # the epoch-end read-back only: the count does not grow with the number of steps
    assert few == more and few <= 8, (few, more)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_device_sync_in_cuda_training_steps(smoke):
    cfg, store = smoke
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"batch_size": 2, "device": "cuda"}),
                                 "data": cfg.data.model_copy(update={"on_device": True})})
    trainer = Trainer(cfg, store, torch.device("cuda"), DistInfo())
    trainer.train_epoch(0, show_progress=False)            # warm-up: allocations, cuDNN choices
    torch.cuda.synchronize()
    import benchmark.run.train as T
    every = T.LOSS_CHECK_EVERY
    T.LOSS_CHECK_EVERY = 10**6
    trainer.batches.sampler.steps = 3
    batches = list(trainer.batches.epoch(1))
    try:
        torch.cuda.set_sync_debug_mode("error")
        # the steps themselves, without the epoch-end read-back
        for images, masks in batches:
            images, masks = to_model_input(images, masks, trainer.device, cfg.data.hu_window)
            trainer.optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.float16, enabled=trainer.use_amp):
                out = trainer.net(images)
            loss = trainer.loss_fn(out.float(), masks)
            trainer.scaler.scale(loss).backward()
            trainer.scaler.step(trainer.optimizer)
            trainer.scaler.update()
    finally:
        torch.cuda.set_sync_debug_mode(0)
        T.LOSS_CHECK_EVERY = every


def _train(cfg, store, epochs, state=None):
    trainer = Trainer(cfg, store, torch.device("cpu"), DistInfo())
    if state is not None:
        trainer.model.load_state_dict(state["model"])
        trainer.load_training_state(state)
    losses = [trainer.train_epoch(e, show_progress=False)["train_loss"] for e in epochs]
    return trainer, losses


@pytest.mark.slow
def test_resume_with_workers_reproduces_an_uninterrupted_run(smoke):
    cfg, store = smoke
    with_workers = cfg.model_copy(update={"data": cfg.data.model_copy(update={"num_workers": 2})})
    _, straight = _train(cfg, store, [0, 1, 2])                        # in-process, no interruption
    first, head = _train(with_workers, store, [0, 1])
    state = first.state(2, {}, [], 0.0, None)
    second, tail = _train(with_workers, store, [2], state=state)        # fresh workers, resumed
    assert head + tail == pytest.approx(straight, rel=1e-6)
    again, _ = _train(cfg, store, [0, 1, 2])
    for a, b in zip(second.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-7)
