"""Adding an architecture is one module and its test: no table, protocol or engine file edited.

``tests/toy_architecture.py`` registers ``toy_net`` (experimental, its search space beside it)
the way a new architecture module does. Through the registry alone it builds, tunes its own
knobs, trains at the smoke preset and is listed by ``bench archs``; the published cpu protocol
stays byte for byte what was run.
"""
from __future__ import annotations

import hashlib
import importlib
import math
import sys
from pathlib import Path

import optuna
import pytest
import torch

from benchmark.run.config import build_config

PROTOCOLS = Path(__file__).resolve().parent.parent / "protocols"
#: sha256 of the frozen, published protocols/cpu.yaml (its runs carry the first 12 digits as
#: the tag protocol.sha): adding an architecture must never require editing it
CPU_PROTOCOL_SHA256 = "37499edc635e3d8fe5e75e39df28f0439e26b81348bbce4babb2f8708bab6b2b"


@pytest.fixture()
def toy():
    """``toy_net`` registered by importing its module, and forgotten afterwards."""
    from architectures import ARCHITECTURES
    before = (PROTOCOLS / "cpu.yaml").read_bytes()
    module = importlib.import_module("toy_architecture")
    yield module
    ARCHITECTURES.unregister(module.NAME)
    sys.modules.pop("toy_architecture", None)
    # nothing the test did touched the frozen protocol
    assert (PROTOCOLS / "cpu.yaml").read_bytes() == before


def test_toy_architecture_is_registered_buildable_and_tunable(toy):
    from architectures import architecture_entry, create_architecture, is_experimental, list_architectures
    assert toy.NAME in list_architectures() and is_experimental(toy.NAME)
    entry = architecture_entry(toy.NAME)
    assert entry.family == "CNN" and entry.module is None            # eager: metadata from its decorator
    kwargs = entry.search_space(optuna.trial.FixedTrial({"arch.width": 8}))
    assert kwargs == {"width": 8}
    net = create_architecture(toy.NAME, in_channels=1, out_channels=1, spatial_size=(8, 16, 16), **kwargs)
    assert net(torch.zeros(2, 1, 8, 16, 16)).shape == (2, 1, 8, 16, 16)
    # a run's config resolves it and applies its declared smoke size
    cfg = build_config("smoke", **{"model.arch": toy.NAME})
    assert cfg.model.arch == toy.NAME and cfg.model.kwargs == {"width": 2}


def test_toy_architecture_trains_at_smoke_level(toy, one_thread):
    """The engine's trainer builds it by name and one smoke epoch moves its weights."""
    from benchmark.data.store import load_crops
    from benchmark.run.train import DistInfo, Trainer
    cfg = build_config("smoke", ["train.epochs=1", "train.steps_per_epoch=2"], **{"model.arch": toy.NAME})
    store = load_crops(cfg.data, progress=False)
    trainer = Trainer(cfg, store, torch.device("cpu"), DistInfo())
    assert isinstance(trainer.model, toy.ToyNet)
    start = [p.detach().clone() for p in trainer.model.parameters()]
    loss = trainer.train_epoch(0, show_progress=False)["train_loss"]
    val = trainer.validate()
    assert math.isfinite(loss) and 0.0 <= val["val_dice"] <= 1.0 and math.isfinite(val["val_loss"])
    assert any(not torch.equal(a, b) for a, b in zip(start, trainer.model.parameters()))


def test_bench_archs_lists_the_toy_architecture(toy, bench_home, capsys):
    from benchmark.cli.main import main
    assert main(["archs", "--preset", "smoke", "--filter", "toy*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].split()[0] == "name"
    assert lines[1].split()[:3] == [toy.NAME, "CNN", "(experimental)"]


def test_the_published_cpu_protocol_is_unchanged(toy):
    """Registering an architecture leaves the frozen protocol's bytes and sha as published,
    and the protocol still loads: an experimental architecture need not be in it."""
    from benchmark.campaigns.protocol import load_protocol
    data = (PROTOCOLS / "cpu.yaml").read_bytes()
    assert hashlib.sha256(data).hexdigest() == CPU_PROTOCOL_SHA256
    lp = load_protocol(PROTOCOLS / "cpu.yaml")
    assert lp.sha == CPU_PROTOCOL_SHA256[:12] and toy.NAME not in lp.spec.architectures
