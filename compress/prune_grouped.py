"""Channel pruning through grouped 1x1 convs and channel shuffles (FBNet's `_g2` ops, ShuffleNet V1).

A grouped conv with g groups splits the tensor it reads or writes into g equal, contiguous
blocks; filter o reads only block ``o // (out / g)``. After pruning, the same conv (still g
groups) splits the narrower tensor into g equal blocks again, so a kept channel stays connected
to the same filters only if it lands in the block of the same number. Sorted kept channels land
there exactly when every *cell* keeps the count the pruned width gives it, where a channel's cell
is the tuple of its block numbers under every grouped conv that touches the tensor. Both widths
must be multiples of each g.

Inside a block with a shuffle (grouped expand -> shuffle(g) -> depthwise -> grouped project) the
expand writes tensor E, the depthwise and project read the shuffled S, and shuffle(g) on width
``g * n`` moves E channel ``i * n + j`` to S position ``j * g + i``. A channel of E therefore has
two block numbers: its expand group ``i`` and the project group ``(j * g + i) // n`` of where the
shuffle puts it. With those as its cell (and the quotas of the pruned n), the kept E channels,
sorted, are a valid expand output, and the shuffle of the pruned E puts each kept channel in the
project group it had: `shuffled_index` gives the original S channel at each pruned S position,
which is what the depthwise conv and the project conv's input columns keep. When the cells'
sizes allow no pruned width (a cell would need more channels than it has), the width is refused
like any other structure-changing width and the next allowed one is used.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

Cell = tuple[int, ...]


def cell_of_channels(width: int, partitions: Iterable[int], shuffle: int = 1) -> list[Cell] | None:
    """The cell of each channel of a tensor `width` wide, or None when some group count (or the
    shuffle's) does not divide it."""
    partitions = tuple(partitions)
    if any(width % groups for groups in (*partitions, shuffle)):
        return None
    cells = []
    n = width // shuffle
    for channel in range(width):
        cell = tuple(channel * groups // width for groups in partitions)
        if shuffle > 1:
            i, j = divmod(channel, n)
            cell += (i, (j * shuffle + i) // n)
        cells.append(cell)
    return cells


def quotas(width: int, partitions: Iterable[int], shuffle: int = 1) -> Counter[Cell] | None:
    cells = cell_of_channels(width, partitions, shuffle)
    return None if cells is None else Counter(cells)


def width_step(round_to: int, partitions: Iterable[int], shuffle: int = 1) -> int:
    """Pruned widths are multiples of `round_to` and of every group count."""
    return math.lcm(round_to, shuffle, *partitions)


def infeasible_widths(width: int, every: int, partitions: Iterable[int], shuffle: int = 1) -> set[int]:
    """Narrower multiples of `every` whose cells would need more channels than `width`'s have."""
    return set(_infeasible(width, every, tuple(partitions), shuffle))


@functools.lru_cache(maxsize=1024)  # a ratio search plans the same units hundreds of times
def _infeasible(width: int, every: int, partitions: tuple[int, ...], shuffle: int) -> frozenset[int]:
    if not partitions and shuffle == 1:
        return frozenset()
    have = quotas(width, partitions, shuffle)
    if have is None:
        raise ValueError(f"width {width} is not a multiple of the groups {partitions} / shuffle {shuffle}")
    bad = set()
    for candidate in range(every, width, every):
        need = quotas(candidate, partitions, shuffle)
        if need is None or any(count > have.get(cell, 0) for cell, count in need.items()):
            bad.add(candidate)
    return frozenset(bad)


def choose_in_cells(scores: Tensor, new_width: int, partitions: Iterable[int], shuffle: int,
                    select: Callable[[Tensor, int], Tensor]) -> Tensor:
    """Sorted channels to keep: in every cell, the best-scoring as many as the pruned width gives
    it (`select(scores, keep)`: sorted indices of the `keep` best)."""
    partitions = tuple(partitions)
    cells = cell_of_channels(scores.numel(), partitions, shuffle)
    need = quotas(new_width, partitions, shuffle)
    if cells is None or need is None:
        raise ValueError(f"widths {scores.numel()} -> {new_width} do not fit groups {partitions} / shuffle {shuffle}")
    kept = []
    for cell, count in need.items():
        members = torch.tensor([c for c, own in enumerate(cells) if own == cell], dtype=torch.long)
        if count > members.numel():
            raise ValueError(f"cell {cell} has {members.numel()} channels, the pruned width needs {count}")
        kept.append(members[select(scores[members], count)])
    return torch.cat(kept).sort().values


def shuffled_index(kept: Tensor, width: int, groups: int) -> Tensor:
    """Original shuffled (S) channel at each position of the pruned shuffled tensor, for the kept
    expand (E) channels `kept` (sorted, the same count in every expand group)."""
    if groups == 1:
        return kept
    n, new_n = width // groups, kept.numel() // groups
    positions = torch.arange(kept.numel())
    j_new, i = positions // groups, positions % groups
    original = kept[i * new_n + j_new]
    return (original % n) * groups + original // n


def grouped_conv_in(state: dict[str, Tensor], key: str, index: Tensor, groups: int, width: int) -> None:
    """Keep input channels `index` (in the pruned order) of a grouped conv reading `width`
    channels: group q keeps the q-th equal slice of `index`, which must lie in its input block."""
    weight = state[key]
    if groups == 1:
        state[key] = weight.index_select(1, index)
        return
    block, new_block, out_block = width // groups, index.numel() // groups, weight.shape[0] // groups
    parts = []
    for q in range(groups):
        local = index[q * new_block:(q + 1) * new_block] - q * block
        if local.numel() and (local.min() < 0 or local.max() >= block):
            raise ValueError(f"{key}: kept input channels cross group {q}'s block")
        parts.append(weight[q * out_block:(q + 1) * out_block].index_select(1, local))
    state[key] = torch.cat(parts)


__all__ = ["cell_of_channels", "choose_in_cells", "grouped_conv_in", "infeasible_widths", "quotas",
           "shuffled_index", "width_step"]
