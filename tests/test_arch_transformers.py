"""TransFuse-3D and MCTrans-3D: shapes at the three preset patches, gradients, a few
optimisation steps, and the 3D-specific choices (token grid, padding, proxy feedback)."""
from __future__ import annotations

import math

import optuna
import pytest
import torch

from architectures import architecture_entry, create_architecture
from benchmark.core.errors import UsageError
from conftest import sphere_batch

from benchmark.losses import create_loss
from benchmark.losses.deep_supervision import DeepSupervisionLoss

NAMES = ["transfuse_s", "transfuse_l", "mctrans"]
SMOKE, CPU, PAPER = (8, 16, 16), (16, 32, 32), (32, 64, 64)  # (D, H, W) of the three presets


pytestmark = pytest.mark.usefixtures("one_thread")


def _build(name, size):
    return create_architecture(name, in_channels=1, out_channels=1, spatial_size=size)




def _criterion(model):
    return DeepSupervisionLoss(create_loss("dice_bce"), getattr(model, "deep_supervision_weights", None))


def test_registered_with_metadata():
    for name in NAMES:
        entry = architecture_entry(name)
        assert entry.family == "CNN+Transformer"
        assert "arXiv" in entry.paper
    assert architecture_entry("transfuse").name == "transfuse_s"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [SMOKE, CPU])
def test_train_outputs_match_input(name, size):
    model = _build(name, size).train()
    out = model(torch.randn(2, 1, *size))
    outs = out if isinstance(out, list) else [out]
    weights = getattr(model, "deep_supervision_weights", None)
    if weights is not None:
        assert len(outs) == len(weights)
    assert outs[0].shape == (2, 1, *size)
    for o in outs:
        assert o.shape[:2] == (2, 1)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [SMOKE, CPU, pytest.param(PAPER, marks=pytest.mark.slow)])   # the paper size: ~3 s each
def test_eval_output_matches_input(name, size):
    model = _build(name, size).eval()
    batch = 1 if size == PAPER else 2
    with torch.no_grad():
        out = model(torch.randn(batch, 1, *size))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (batch, 1, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_odd_size_is_padded_and_cropped(name):
    # Built for the cpu patch, fed a size that is no multiple of the token grid / pooling.
    model = _build(name, CPU).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 9, 20, 18))
    assert out.shape == (1, 1, 9, 20, 18)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_finite_and_reach_every_parameter(name):
    model = _build(name, SMOKE).train()
    image, mask = sphere_batch(SMOKE)
    _criterion(model)(model(image), mask).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} receives no gradient"
        assert torch.isfinite(p.grad).all(), pname
    # Nothing may be dead weight: the transformer and the proxies must reach the loss.
    key = "proxy_embed" if name == "mctrans" else "patch_embed.pos_embed"
    assert dict(model.named_parameters())[key].grad.abs().sum() > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_few_adam_steps_lower_the_loss(name):
    model = _build(name, SMOKE).train()
    image, mask = sphere_batch(SMOKE)
    criterion = _criterion(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = criterion(model(image), mask)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses), losses
    assert losses[-1] < 0.9 * losses[0], losses


def test_transfuse_token_grid_is_finer_than_4x4x2():
    model = _build("transfuse_s", PAPER)
    # patch 8 at 64x64x32 -> 8x8x4 tokens (z, y, x), not the 2D design's 4x4x2.
    assert tuple(model.patch_embed.pos_embed.shape[2:]) == (4, 8, 8)
    small = _build("transfuse_s", SMOKE)
    assert tuple(small.patch_embed.pos_embed.shape[2:]) == (1, 2, 2)


def test_transfuse_l_is_larger_than_s():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(_build("transfuse_l", SMOKE)) > 2 * count(_build("transfuse_s", SMOKE))


def test_mctrans_proxies_change_the_prediction():
    # The released code's proxies never reach the output; ours must, at inference.
    model = _build("mctrans", SMOKE).eval()
    x = torch.randn(1, 1, *SMOKE)
    with torch.no_grad():
        before = model(x)
        model.proxy_embed.add_(torch.randn_like(model.proxy_embed))
        after = model(x)
    assert not torch.allclose(before, after)


def test_mctrans_attention_keeps_samples_apart():
    # The released cross-attention mixed tokens across the batch; each sample's output
    # must depend on that sample only.
    model = _build("mctrans", SMOKE).eval()
    a, b = torch.randn(1, 1, *SMOKE), torch.randn(1, 1, *SMOKE)
    with torch.no_grad():
        alone = model(a)
        paired = model(torch.cat([a, b]))[:1]
    torch.testing.assert_close(alone, paired, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_search_space_builds_a_valid_model(name):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    trial = study.ask()
    kwargs = architecture_entry(name).search_space(trial)
    assert kwargs and all(k.replace("arch.", "") in kwargs for k in trial.params)
    assert all(k.startswith("arch.") for k in trial.params)
    model = create_architecture(name, spatial_size=SMOKE, **kwargs).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, *SMOKE)).shape == (1, 1, *SMOKE)


def test_bad_widths_are_usage_errors():
    with pytest.raises(UsageError, match="mctrans"):
        create_architecture("mctrans", d_model=100)
    with pytest.raises(UsageError, match="transfuse"):
        create_architecture("transfuse_s", embed_dim=100, num_heads=6)
