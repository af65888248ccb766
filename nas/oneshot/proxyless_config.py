"""Settings of a ProxylessNAS search (`ProxylessConfig`) and its architecture loss
(`latency_loss`); the search itself is `nas.oneshot.proxyless`.

Loss of the architecture step (`latency_loss`), CE the val cross-entropy times `ce_weight`,
E = E[LAT] in ms = sum over slots of softmax(alpha) . latency (`LatencyModel`), T the target
(`target_ms`). In a two-path step E's *value* is the full expectation but its *gradient* flows
through the two sampled logits only, via the softmax renormalised over the pair (the paper resets
p to the two paths). The authors' code uses the renormalised E for the value too; that E is biased
low when skip holds much mass (a sampled skip dominates its pair), harmless for their monotone
losses but it stalls the target-seeking `abs` loss above T, so the value here is the full E.

- ``abs`` (default): CE + w * |E / T - 1|, w = `latency_weight` (default 2.0). The absolute-value
  reward of TuNAS (Bender et al., "Can weight sharing outperform random architecture search?",
  CVPR 2020) as a loss: it pulls E to T from both sides, so the search ends *near* the target
  rather than trading accuracy for speed without a set point (the two forms below are monotone).
- ``add_linear``: CE + w * (E - T) / T (paper Eq. 5, `CE + lambda_2 E[LAT]`, normalised as in the
  authors' code `add#linear`, default w = 0.1). Monotone in E: T only sets the scale.
- ``mul_log``: w * CE * (log E / log T) ** beta (the authors' code `mul#log`, mit-han-lab/
  proxylessnas search/nas_manager.py, used for their mobile search with w = 0.2, beta = 0.3,
  T = 80 ms; beta = `latency_exponent`). The log ratio depends on the unit the latencies are
  written in (the authors': ms; ours: `latency_unit_ms`, e.g. 0.001 for microseconds) and needs
  E, T above one unit, so a target at or below one unit is refused.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from nas.training.train import is_int
from search_spaces.errors import OptionError

__all__ = ["BINARIZE", "DERIVE_RULES", "LOSS_FORMS", "ProxylessConfig", "latency_loss"]

LOSS_FORMS = ("abs", "add_linear", "mul_log")
DEFAULT_LATENCY_WEIGHT = {"abs": 2.0, "add_linear": 0.1, "mul_log": 0.2}
BINARIZE = ("two", "all")
DERIVE_RULES = ("argmax", "target")


@dataclass(frozen=True)
class ProxylessConfig:
    """Settings of one supernet search; validated on construction. `target_ms` is the latency
    target T; `layout` holds options of the space's supernet layout (mnasnet: `se_index`,
    `layers_index`, `width_index`)."""

    target_ms: float
    epochs: int = 10
    warmup_epochs: int = 1
    batch_size: int = 64
    steps_per_epoch: int | None = None
    weight_lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 4e-5
    grad_clip: float | None = 5.0
    arch_lr: float = 0.2  # for a few hundred arch steps; the authors: 1e-3 over ~1e5 steps
    arch_betas: tuple[float, float] = (0.0, 0.999)
    arch_update_every: int = 1
    latency_loss: str = "abs"
    latency_weight: float | None = None  # None: DEFAULT_LATENCY_WEIGHT of the form
    latency_exponent: float = 0.3
    latency_unit_ms: float = 1.0  # mul_log only: the unit of log E / log T
    ce_weight: float = 1.0
    binarize: str = "two"
    derive: str = "argmax"  # or "target": the most probable network within target +- derive_tolerance
    derive_tolerance: float = 0.05
    seed: int = 0
    device: str = "auto"
    layout: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> OptionError:
            return OptionError(f"ProxylessConfig.{name}={getattr(self, name)!r}: expected {expected}")

        object.__setattr__(self, "arch_betas", tuple(self.arch_betas))
        if not (isinstance(self.target_ms, (int, float)) and math.isfinite(self.target_ms) and self.target_ms > 0):
            raise bad("target_ms", "a finite number of milliseconds > 0")
        for name, minimum in (("epochs", 1), ("warmup_epochs", 0), ("batch_size", 1), ("arch_update_every", 1)):
            if not is_int(getattr(self, name)) or getattr(self, name) < minimum:
                raise bad(name, f"an int >= {minimum}")
        if self.warmup_epochs >= self.epochs:
            raise bad("warmup_epochs", f"fewer than epochs={self.epochs} (no epoch would update alpha)")
        if self.steps_per_epoch is not None and (not is_int(self.steps_per_epoch) or self.steps_per_epoch < 1):
            raise bad("steps_per_epoch", "None or an int >= 1")
        for name in ("weight_lr", "arch_lr"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise bad(name, "a finite float > 0")
        if not 0 <= self.momentum < 1:
            raise bad("momentum", "a float in [0, 1)")
        if len(self.arch_betas) != 2 or not all(0 <= beta < 1 for beta in self.arch_betas):
            raise bad("arch_betas", "two floats in [0, 1) (Adam's beta1, beta2)")
        if self.latency_loss not in LOSS_FORMS:
            raise bad("latency_loss", f"one of {list(LOSS_FORMS)}")
        if self.latency_weight is not None and not (math.isfinite(self.latency_weight) and self.latency_weight >= 0):
            raise bad("latency_weight", "None or a finite float >= 0")
        if not (math.isfinite(self.latency_unit_ms) and self.latency_unit_ms > 0):
            raise bad("latency_unit_ms", "a finite float > 0")
        if self.latency_loss == "mul_log" and self.target_ms <= self.latency_unit_ms:
            raise bad("target_ms", f"> latency_unit_ms={self.latency_unit_ms:g} for latency_loss='mul_log' (log E / "
                      "log T changes sign at one unit); lower latency_unit_ms (0.001: microseconds) or use 'abs'")
        if not (math.isfinite(self.ce_weight) and self.ce_weight >= 0):
            raise bad("ce_weight", "a finite float >= 0")
        if self.ce_weight == 0 and self.effective_latency_weight == 0:
            raise bad("ce_weight", "> 0 when latency_weight is 0 (the architecture loss would be 0)")
        if self.derive not in DERIVE_RULES:
            raise bad("derive", f"one of {list(DERIVE_RULES)}")
        if not 0 < self.derive_tolerance < 1:
            raise bad("derive_tolerance", "a fraction of the target in (0, 1)")
        if self.binarize not in BINARIZE:
            raise bad("binarize", f"one of {list(BINARIZE)}")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise bad("grad_clip", "None or a finite float > 0")
        if not is_int(self.seed):
            raise bad("seed", "an int")
        if not isinstance(self.layout, dict):
            raise bad("layout", "a dict of layout options")

    @property
    def effective_latency_weight(self) -> float:
        return DEFAULT_LATENCY_WEIGHT[self.latency_loss] if self.latency_weight is None else self.latency_weight

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["arch_betas"] = list(self.arch_betas)
        return data


def latency_loss(ce: Tensor, expected_ms: Tensor, config: ProxylessConfig) -> Tensor:
    """The architecture loss of `config.latency_loss` (module docstring)."""
    target, weight = config.target_ms, config.effective_latency_weight
    ce = config.ce_weight * ce
    if config.latency_loss == "abs":
        return ce + weight * (expected_ms / target - 1.0).abs()
    if config.latency_loss == "add_linear":
        return ce + weight * (expected_ms - target) / target
    # E below one unit would make the log ratio negative and its fractional power NaN
    unit = config.latency_unit_ms
    ratio = torch.log((expected_ms / unit).clamp(min=1.0 + 1e-6)) / math.log(target / unit)
    return weight * ce * ratio ** config.latency_exponent
