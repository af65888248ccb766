"""`ElasticSupernet`: one network holding every sub-network of a space (Once-for-All, Cai et al.,
ICLR 2020): a shared stem and head, and per stage a stack of elastic positions (an `ElasticMBConv`,
or an `ElasticChoice` of op-type paths) of which a sub-network runs the first d, each at its own
kernel and expansion (and, in spaces with elastic width, its own input and output width, which
`set_active` passes to each position).

`set_active(arch)` selects a sub-network for `forward`; `extract(arch)` gives the state dict of
`search_spaces.build.build_model(arch)`, so a sub-network leaves the supernet as an ordinary model
whose logits equal the supernet's for the same setting (BN running statistics included).
Which spaces are covered, and how, is `nas.oneshot.elastic_spaces`'s business.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from nas.oneshot.elastic_plan import ElasticAdapter
from nas.oneshot.elastic_spaces import adapter_for
from search_spaces.build import build_stem, initialise_weights
from search_spaces.space import SearchSpace
from search_spaces.spec import ArchSpec, BlockSpec

__all__ = ["ElasticSupernet"]


class ElasticSupernet(nn.Module):
    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space
        self.adapter: ElasticAdapter = adapter_for(space)  # SupernetPlanError for spaces not covered
        reference = self.adapter.largest()
        self.stem = build_stem(reference)
        self.stages = nn.ModuleList()
        for stage in self.adapter.stages:
            self.stages.append(nn.ModuleList([self.adapter.position(stage, j) for j in range(stage.max_depth)]))
        self.head = self.adapter.head(reference)
        _initialise_head_and_stem(self)
        self.depths: list[int] = []
        self.epoch = 0  # finished training epochs (set by training and loading; keys the accuracy cache)
        self.active: ArchSpec = reference
        self.set_active(reference)

    # -- which sub-network ---------------------------------------------------------------------------
    def covers(self, arch: ArchSpec) -> None:
        """Raise `SupernetPlanError` (naming the block and field) unless `arch` is a sub-network."""
        self.adapter.covers(arch)

    def _settings(self, arch: ArchSpec) -> list[list[tuple[nn.Module, BlockSpec, int]]]:
        """(position, block, the block's input width) of `arch`'s layers, stage by stage."""
        settings, channels = [], arch.stem.out_channels
        for layers, positions in zip(self.adapter.layers_of(arch), self.stages):
            stage = []
            for position, block in zip(positions, layers):
                stage.append((position, block, channels))
                channels = block.out_channels
            settings.append(stage)
        return settings

    def set_active(self, arch: ArchSpec) -> None:
        settings = self._settings(arch)
        for stage in settings:
            for position, block, in_channels in stage:
                position.set_block(block, in_channels)
        self.depths = [len(stage) for stage in settings]
        self.active = arch

    def largest(self) -> ArchSpec:
        return self.adapter.largest()

    def smallest(self, elastic: frozenset[str] | None = None) -> ArchSpec:
        """The smallest sub-network; with `elastic`, the smallest whose other dimensions are largest."""
        return self.adapter.smallest(elastic)

    def sample(self, rng: np.random.Generator, by: str = "network", elastic: frozenset[str] | None = None) -> ArchSpec:
        """A sub-network drawn uniformly from the covered ones (all of the space's); `by="choice"`:
        depth, then kernel and expansion, each uniform (Once-for-All's sampling). `elastic`: only
        these dimensions vary (progressive shrinking's phases), the others stay largest."""
        return self.adapter.sample(rng, by, elastic)

    def phases(self) -> list[frozenset[str]]:
        """Progressive shrinking's phases: the largest network alone, then one more elastic
        dimension each (`adapter.dimensions`' order)."""
        dims = self.adapter.dimensions
        return [frozenset(dims[:i]) for i in range(len(dims) + 1)]

    # -- running and extracting ----------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for positions, depth in zip(self.stages, self.depths):
            for position in positions[:depth]:
                x = position(x)
        return self.head(x)

    @torch.no_grad()
    def extract(self, arch: ArchSpec) -> dict[str, Tensor]:
        """The state dict of `build_model(arch)` (the same keys), inherited from the supernet."""
        out = {f"stem.{k}": v.detach().clone() for k, v in self.stem.state_dict().items()}
        index = 0
        for stage in self._settings(arch):
            for position, block, in_channels in stage:
                out.update(position.extract_block(block, f"blocks.{index}.", in_channels))
                index += 1
        if hasattr(self.head, "extract"):  # a head reading an elastic width
            out.update(self.head.extract("head.", arch.blocks[-1].out_channels))
        else:
            out.update({f"head.{k}": v.detach().clone() for k, v in self.head.state_dict().items()})
        return out

    def positions(self) -> list[nn.Module]:
        return [position for positions in self.stages for position in positions]

    def reorder_channels(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Most important inner channels first in every position (see `ElasticMBConv.reorder_channels`)."""
        for position in self.positions():
            position.reorder_channels(optimizer)


def _initialise_head_and_stem(model: nn.Module) -> None:
    """search_spaces.build's initialisation for the plain parts (the elastic positions initialise
    themselves alike)."""
    for part in (model.stem, model.head):
        initialise_weights(part)
