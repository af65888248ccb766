"""Low-rank factorization of a trained network's convs and linears, weights included.

The factorized network is an ordinary spec: `lowrank_spec(spec, policy)` writes the ranks into
`BlockSpec.ranks` / `HeadSpec.ranks`, `build_model` builds the low-rank layers
(`search_spaces.lowrank_layers`), and `factorize(model, spec)` fills them from the trained
weights. The decompositions, on a conv weight W (d x c_in x k x k) or a linear's (d x c_in):

- SVD (Zhang et al., "Accelerating very deep convolutional networks for classification and
  detection", TPAMI 2016): unfold W to d x (c_in k k) = U S V^T and keep r terms; V_r^T becomes
  r k x k kernels, U_r S_r the d 1x1 kernels after them. By Eckart-Young this is the best rank-r
  approximation of the unfolded kernel, its squared error the sum of the dropped s_i^2.
- Tucker-2 (Kim et al., "Compression of deep convolutional neural networks for fast and low power
  mobile applications", ICLR 2016), initialised by HOSVD: U_out (d x r_out) and U_in (c_in x r_in)
  are the leading left singular vectors of W unfolded along its output and its input mode; the core
  is W x_0 U_out^T x_1 U_in^T. Then 1x1 (U_in^T), k x k (core), 1x1 (U_out).

Which ranks to use is `compress.lowrank_policy`'s business.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from compress.lowrank_policy import RankPolicy
from search_spaces.build import Network, build_model
from search_spaces.lowrank_layers import SVDConv, SVDLinear, Tucker2Conv
from search_spaces.spec import ArchSpec

__all__ = ["factorize", "factorize_model", "svd_factors", "tucker2_factors"]


def svd_factors(weight: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """(first, second, singular values): first r x c_in (x k x k) and second d x r (x 1 x 1) with
    second @ first = the best rank-r approximation of `weight` unfolded to d x (c_in k k)."""
    d = weight.shape[0]
    unfolded = weight.detach().double().reshape(d, -1)
    u, s, vh = torch.linalg.svd(unfolded, full_matrices=False)
    first = vh[:rank].reshape(rank, *weight.shape[1:])
    second = (u[:, :rank] * s[:rank]).reshape(d, rank, *([1] * (weight.dim() - 2)))
    return first.to(weight.dtype), second.to(weight.dtype), s


def _leading_vectors(unfolded: Tensor, rank: int) -> Tensor:
    u, _, _ = torch.linalg.svd(unfolded, full_matrices=False)
    return u[:, :rank]


def tucker2_factors(weight: Tensor, rank_in: int, rank_out: int) -> tuple[Tensor, Tensor, Tensor]:
    """(first r_in x c_in x 1 x 1, core r_out x r_in x k x k, last d x r_out x 1 x 1) by HOSVD."""
    w = weight.detach().double()
    d, c = w.shape[:2]
    u_out = _leading_vectors(w.reshape(d, -1), rank_out)                     # d x r_out
    u_in = _leading_vectors(w.transpose(0, 1).reshape(c, -1), rank_in)       # c x r_in
    core = torch.einsum("dchw,do,ci->oihw", w, u_out, u_in)
    dtype = weight.dtype
    return (u_in.T.reshape(rank_in, c, 1, 1).to(dtype), core.to(dtype),
            u_out.reshape(d, rank_out, 1, 1).to(dtype))


@torch.no_grad()
def _fill(target: nn.Module, original: nn.Module) -> None:
    """Set a low-rank module's weights from the layer it replaces."""
    if isinstance(target, Tucker2Conv):
        first, core, last = target
        weights = tucker2_factors(original.weight, first.out_channels, core.out_channels)
        parts = (first, core, last)
    elif isinstance(target, (SVDConv, SVDLinear)):
        first, second = target
        rank = first.out_channels if isinstance(target, SVDConv) else first.out_features
        weights = svd_factors(original.weight, rank)[:2]
        parts = (first, second)
    else:
        raise TypeError(f"not a low-rank module: {type(target).__name__}")
    for part, weight in zip(parts, weights):
        part.weight.copy_(weight)
    if original.bias is not None:
        parts[-1].bias.copy_(original.bias)


def factorize_model(model: nn.Module, factorized: nn.Module) -> nn.Module:
    """Copy `model`'s weights into `factorized` (the same network with some layers low-rank):
    shared tensors as they are, each low-rank module from the decomposition of the layer it
    replaces (same module path). Returns `factorized`, in `model`'s train/eval mode."""
    state = model.state_dict()
    with torch.no_grad():
        for key, value in factorized.state_dict().items():
            if key in state and state[key].shape == value.shape:
                value.copy_(state[key])
    for name, module in factorized.named_modules():
        if isinstance(module, (SVDConv, Tucker2Conv, SVDLinear)):
            _fill(module, model.get_submodule(name))
    return factorized.train(model.training)


def factorize(model: Network, policy: RankPolicy) -> Network:
    """The trained `model` with the layers `policy` names factorized (a new `Network`; `model`
    is not changed). Its spec is `lowrank_spec(model.spec, policy)`."""
    spec: ArchSpec = policy.apply(model.spec)
    factorized = build_model(spec).to(next(model.parameters()).device)
    return factorize_model(model, factorized)
