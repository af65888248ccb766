"""Low-rank layers: what a conv or linear named in `BlockSpec.ranks` / `HeadSpec.ranks` is built as.

- One rank r, k x k conv (c_in -> d): `SVDConv`, r k x k kernels then d 1x1 kernels, the
  "d kernels -> d' kernels + d 1x1 kernels" split of Zhang et al. (TPAMI 2016) by the SVD of the
  kernel unfolded to d x (c_in k k). A 1x1 conv becomes two 1x1 convs.
- Two ranks [r_in, r_out], k x k conv with k > 1: `Tucker2Conv`, 1x1 c_in -> r_in, k x k
  r_in -> r_out, 1x1 r_out -> d (Kim et al., ICLR 2016).
- One rank r, linear (c -> d): `SVDLinear`, two linears c -> r -> d.

The replacement keeps the original's stride, padding and bias (on the last factor), so the
batch norm after it and the state-dict keys around it stay as they were. A layer is named by its
path inside the part ("expand", "conv_a", "se.reduce", "classifier"): the shortest path whose
module holds that one conv or linear and no other (`factorizable_layers` lists them). The weights
come from `compress.lowrank`; here only shapes are decided.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from search_spaces.spec_vocabulary import SpecError

__all__ = ["SVDConv", "SVDLinear", "Tucker2Conv", "apply_ranks", "factorizable_layers", "full_ranks", "layer_paths"]

Ranks = tuple[tuple[str, tuple[int, ...]], ...]


class SVDConv(nn.Sequential):
    """k x k conv c_in -> r (the original's stride and padding), then 1x1 conv r -> d."""

    def __init__(self, conv: nn.Conv2d, rank: int) -> None:
        super().__init__(
            nn.Conv2d(conv.in_channels, rank, conv.kernel_size, conv.stride, conv.padding, conv.dilation, bias=False),
            nn.Conv2d(rank, conv.out_channels, 1, bias=conv.bias is not None),
        )


class Tucker2Conv(nn.Sequential):
    """1x1 c_in -> r_in, k x k r_in -> r_out (the original's stride and padding), 1x1 r_out -> d."""

    def __init__(self, conv: nn.Conv2d, rank_in: int, rank_out: int) -> None:
        super().__init__(
            nn.Conv2d(conv.in_channels, rank_in, 1, bias=False),
            nn.Conv2d(rank_in, rank_out, conv.kernel_size, conv.stride, conv.padding, conv.dilation, bias=False),
            nn.Conv2d(rank_out, conv.out_channels, 1, bias=conv.bias is not None),
        )


class SVDLinear(nn.Sequential):
    def __init__(self, linear: nn.Linear, rank: int) -> None:
        super().__init__(nn.Linear(linear.in_features, rank, bias=False),
                         nn.Linear(rank, linear.out_features, bias=linear.bias is not None))


LOWRANK_TYPES = (SVDConv, Tucker2Conv, SVDLinear)


def _is_weight_layer(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv2d, nn.Linear))


def layer_paths(module: nn.Module) -> dict[str, str]:
    """Short name -> full module path of every conv and linear in `module` (grouped ones too):
    the shortest path whose module holds that one layer and no other."""
    full = [name for name, child in module.named_modules() if name and _is_weight_layer(child)]
    out = {}
    for path in full:
        parts, short = path.split("."), path
        for cut in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:cut])
            if sum(1 for other in full if other == prefix or other.startswith(prefix + ".")) != 1:
                break
            short = prefix
        out[short] = path
    return out


def full_ranks(layer: nn.Module) -> tuple[int, ...]:
    """(full SVD rank,) of a linear or 1x1 conv; (full SVD rank, c_in, d) of a k x k conv (the
    ranks at which SVD and Tucker-2 reproduce it exactly)."""
    if isinstance(layer, nn.Linear):
        return (min(layer.in_features, layer.out_features),)
    k = layer.kernel_size[0] * layer.kernel_size[1]
    svd = min(layer.out_channels, layer.in_channels * k)
    return (svd,) if k == 1 else (svd, layer.in_channels, layer.out_channels)


def why_not_factorizable(layer: nn.Module) -> str | None:
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        return f"is a grouped conv (groups={layer.groups}): no rank to cut"
    return None


def factorizable_layers(module: nn.Module) -> dict[str, nn.Module]:
    """Short name -> conv or linear that `ranks` may name (ungrouped ones), in module order."""
    return {short: module.get_submodule(path) for short, path in layer_paths(module).items()
            if why_not_factorizable(module.get_submodule(path)) is None}


def _check_ranks(layer: nn.Module, name: str, ranks: tuple[int, ...], path: str) -> None:
    full = full_ranks(layer)
    if len(ranks) == 2 and len(full) == 1:
        raise SpecError(f"{path}.{name}={list(ranks)}: Tucker-2 ranks need a k x k conv (k > 1); "
                        f"give one rank <= {full[0]}")
    bounds = full[:1] if len(ranks) == 1 else full[1:]
    for rank, bound, what in zip(ranks, bounds, ("rank",) if len(ranks) == 1 else ("r_in", "r_out")):
        if rank > bound:
            raise SpecError(f"{path}.{name}={rank if len(ranks) == 1 else list(ranks)}: {what} must be <= {bound} "
                            "(full rank)")


def lowrank_module(layer: nn.Module, ranks: tuple[int, ...]) -> nn.Module:
    if isinstance(layer, nn.Linear):
        return SVDLinear(layer, ranks[0])
    return SVDConv(layer, ranks[0]) if len(ranks) == 1 else Tucker2Conv(layer, *ranks)


def apply_ranks(module: nn.Module, ranks: Ranks | Iterable, path: str) -> nn.Module:
    """Replace, in place, each layer named in `ranks` by its low-rank form (fresh weights)."""
    paths = layer_paths(module)
    for name, layer_ranks in ranks:
        if name not in paths:
            usable = ", ".join(short for short, full in paths.items()
                               if why_not_factorizable(module.get_submodule(full)) is None) or "(none)"
            raise SpecError(f"{path}: no conv or linear {name!r} in this {type(module).__name__}; "
                            f"allowed: {usable}")
        layer = module.get_submodule(paths[name])
        reason = why_not_factorizable(layer)
        if reason:
            raise SpecError(f"{path}.{name} {reason}")
        _check_ranks(layer, name, layer_ranks, path)
        parent_path, _, attr = paths[name].rpartition(".")
        parent = module.get_submodule(parent_path) if parent_path else module
        setattr(parent, attr, lowrank_module(layer, layer_ranks))
    return module
