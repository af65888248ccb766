"""Jacobian covariance, `jacov` (Mellor et al., "Neural Architecture Search without Training",
first version, arXiv 2006.04647v1; in Abdelfattah et al. 2021 and NASLib as `jacob_cov`/`jacov`).

The input gradients of sum(logits), one row per image of the batch, are correlated with each
other (Pearson); with eigenvalues v of that N x N matrix and k = 1e-5 the score is
-sum(log(v + k) + 1 / (v + k)). It is at most -N (all images' Jacobians uncorrelated), lower when
the network maps images alike. NaN when some row is constant (a network whose output ignores the
input).
"""

from __future__ import annotations

import numpy as np
from torch import nn

from predictors.proxies.base import ProxyBatch, register_proxy


def jacobian_score(jacobians: np.ndarray, k: float = 1e-5) -> float:
    with np.errstate(invalid="ignore", divide="ignore"):
        correlations = np.corrcoef(jacobians)
    if not np.isfinite(correlations).all():
        return float("nan")
    eigenvalues = np.linalg.eigvalsh(correlations)  # symmetric: real eigenvalues
    return float(-np.sum(np.log(eigenvalues + k) + 1.0 / (eigenvalues + k)))


@register_proxy("jacov", needs_data=True, summary="-sum(log(v+k)+1/(v+k)), v: eigenvalues of the input-Jacobian correlations",
                reference="Mellor et al. 2021 (v1); Abdelfattah et al. 2021")
def jacov(model: nn.Module, batch: ProxyBatch) -> float:
    model.zero_grad(set_to_none=True)
    inputs = batch.inputs.clone().requires_grad_(True)
    model(inputs).sum().backward()
    assert inputs.grad is not None
    return jacobian_score(inputs.grad.reshape(len(inputs), -1).double().numpy())
