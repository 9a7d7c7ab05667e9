"""A toy architecture added the way any architecture is added: one module holding its model,
its search space and its registration (metadata in the decorator), nothing else edited.

Imported by ``tests/test_add_architecture.py`` (importing it registers ``toy_net``). Declared
``experimental``: no published protocol lists it, and none has to be edited for it.
"""
from __future__ import annotations

import torch.nn as nn

from architectures import register_architecture

NAME = "toy_net"


class ToyNet(nn.Module):
    """Two 3x3x3 convolutions at full resolution: any patch shape, logits of the input's shape."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, width: int = 4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv3d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv3d(width, out_channels, 3, padding=1))

    def forward(self, x):
        return self.body(x)


def toy_search_space(trial) -> dict:
    """The architecture's own knobs for tuning (model.kwargs), beside the model."""
    return {"width": trial.suggest_categorical("arch.width", [2, 4, 8])}


@register_architecture(NAME, family="CNN", paper="none (a test's toy network)", search_space=toy_search_space,
                       experimental=True, preset_kwargs={"smoke": {"width": 2}})
def toy_net(in_channels: int = 1, out_channels: int = 1, spatial_size=None, **kwargs):
    return ToyNet(in_channels, out_channels, **kwargs)
