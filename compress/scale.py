"""EfficientNet compound scaling (Tan & Le, ICML 2019) of an `ArchSpec`.

`scale_spec(base, width, depth, resolution)` follows torchvision's `efficientnet.py` (equal to the
TF reference's `round_filters` / `round_repeats`), so the zoo's `efficientnet_b0` scaled by the
published (width, depth, resolution) of B1-B3 builds models with exactly torchvision's
parameter counts:

- channels: `round_filters(c) = make_divisible(c * width, 8)`: the nearest multiple of 8, at
  least 8, and bumped up by 8 if rounding lost more than 10% (torchvision's
  `_MBConvConfig.adjust_channels` -> `_make_divisible`). Applied to the stem, every block's output
  and explicit `mid_channels`, and the head's conv and hidden widths. torchvision builds the
  EfficientNet-B head as `4 * round_filters(320)`; the TF reference uses `round_filters(1280)`;
  both are the same number for every published width (1280, 1408, 1536, ... for B0-B7), and we
  scale the head's own width, which also covers heads that are not 4x the last stage. Width 1.0
  leaves every channel count untouched (torchvision would round a width like ShuffleNet's 116 to
  120 even at 1.0; a no-op scale should return the same network).
  Inner widths derived from `expand_ratio` follow the scaled input (`round(in * e)`, equal to
  torchvision's `make_divisible(in * e, 8)` whenever `in` is a multiple of 8 and `e` an integer).
- depth: `ceil(repeats * depth)` per stage. Stages are recovered from the block list: a new
  stage starts at the first block, at every stride-2 block, and wherever the op or the output
  width changes (consecutive blocks of one op and width, all but the first at stride 1, are one
  stage, as in the papers' tables). Extra blocks are copies of the stage's last block at stride 1
  (the TF reference repeats a stage's block args); with depth < 1 the first blocks are kept.
- resolution: an `int` is the absolute input size; a `float` multiplies the base's
  (rounded to the nearest integer).

`compound_coefficients`, `grid_search_coefficients` and `fit_phi_to_budget` implement the
paper's phi-parameterised scaling: depth = alpha^phi, width = beta^phi, resolution =
gamma^phi with alpha * beta^2 * gamma^2 ~ 2 (FLOPs roughly double per unit of phi).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from predictors.cost import macs_of_spec
from search_spaces.blocks import make_divisible
from search_spaces.errors import OptionError
from search_spaces.spec import ArchSpec, BlockSpec

logger = logging.getLogger(__name__)

PAPER_ALPHA, PAPER_BETA, PAPER_GAMMA = 1.2, 1.1, 1.15  # Tan & Le 2019, Section 3.3


class _Predicts(Protocol):
    def predict(self, arch: ArchSpec) -> float: ...


LatencyPredictor = Callable[[ArchSpec], float] | _Predicts


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Scaled channel count (see the module docstring); width 1.0 is the identity."""
    if width == 1.0:
        return channels
    return make_divisible(channels * width, divisor)


def round_repeats(repeats: int, depth: float) -> int:
    return max(1, math.ceil(repeats * depth))


def stages(spec: ArchSpec) -> list[range]:
    """Block index ranges of the stages (see the module docstring for the rule)."""
    starts = [
        index for index, block in enumerate(spec.blocks)
        if index == 0 or block.stride != 1
        or (block.op, block.out_channels) != (spec.blocks[index - 1].op, spec.blocks[index - 1].out_channels)
    ]
    return [range(start, end) for start, end in zip(starts, starts[1:] + [len(spec.blocks)])]


def _check_positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise OptionError(f"{name}={value!r} must be a finite number > 0")
    return float(value)


def _scale_block(block: BlockSpec, width: float) -> BlockSpec:
    mid = None if block.mid_channels is None else round_filters(block.mid_channels, width)
    return replace(block, out_channels=round_filters(block.out_channels, width), mid_channels=mid)


def scale_spec(
    base: ArchSpec, width: float = 1.0, depth: float = 1.0, resolution: int | float | None = None  # noqa: PYI041
) -> ArchSpec:
    """`base` scaled in width, depth and resolution with EfficientNet's rounding."""
    width, depth = _check_positive("width", width), _check_positive("depth", depth)
    if resolution is None:
        size = base.resolution
    elif isinstance(resolution, bool) or not isinstance(resolution, (int, float)):
        raise OptionError(f"resolution={resolution!r} must be an int (pixels) or a float (factor of {base.resolution})")
    elif isinstance(resolution, int):
        size = resolution
    else:
        size = round(base.resolution * _check_positive("resolution", resolution))
    blocks: list[BlockSpec] = []
    for stage in stages(base):
        members = [_scale_block(base.blocks[index], width) for index in stage]
        count = round_repeats(len(members), depth)
        tail = replace(members[-1], stride=1)
        blocks.extend(members[:count] + [tail] * (count - len(members)))
    head = base.head
    head = replace(
        head,
        conv_channels=None if head.conv_channels is None else round_filters(head.conv_channels, width),
        hidden_channels=None if head.hidden_channels is None else round_filters(head.hidden_channels, width),
    )
    stem = replace(base.stem, out_channels=round_filters(base.stem.out_channels, width))
    name = f"{base.name or 'arch'}@w{width:g}_d{depth:g}_r{size}"
    return base.replace(stem=stem, blocks=tuple(blocks), head=head, resolution=size, name=name)


def compound_coefficients(
    alpha: float, beta: float, gamma: float, phi: float, *, target: float = 2.0, tolerance: float | None = 0.1
) -> tuple[float, float, float]:
    """(depth, width, resolution factor) = (alpha^phi, beta^phi, gamma^phi).

    The paper constrains alpha * beta^2 * gamma^2 ~ 2 (FLOPs x2 per unit of phi) with all three
    >= 1; a product more than `tolerance` (relative) from `target` raises (None: no check). The
    paper's 1.2 * 1.1^2 * 1.15^2 = 1.92 is 4% off."""
    for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if _check_positive(name, value) < 1.0:
            raise OptionError(f"{name}={value!r} must be >= 1 (compound scaling only grows a dimension per phi)")
    if isinstance(phi, bool) or not isinstance(phi, (int, float)) or not math.isfinite(phi):
        raise OptionError(f"phi={phi!r} must be a finite number")
    product = alpha * beta**2 * gamma**2
    if tolerance is not None and abs(product - target) > tolerance * target:
        raise OptionError(
            f"alpha * beta^2 * gamma^2 = {product:.3f} is not within {tolerance:.0%} of {target} "
            f"(alpha={alpha}, beta={beta}, gamma={gamma}); the paper uses 1.2, 1.1, 1.15 (product 1.92)"
        )
    return alpha**phi, beta**phi, gamma**phi


def compound_scale(base: ArchSpec, alpha: float, beta: float, gamma: float, phi: float, **check: Any) -> ArchSpec:
    depth, width, factor = compound_coefficients(alpha, beta, gamma, phi, **check)
    return scale_spec(base, width=width, depth=depth, resolution=float(factor))


@dataclass
class CoefficientSearch:
    """Result of `grid_search_coefficients`: the best triple and every distinct network tried."""

    alpha: float
    beta: float
    gamma: float
    accuracy: float
    trials: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "beta": self.beta, "gamma": self.gamma, "accuracy": self.accuracy,
                "trials": self.trials}


def grid_search_coefficients(
    base: ArchSpec,
    evaluate: Callable[[ArchSpec], float],
    *,
    alphas: Sequence[float] = (1.0, 1.1, 1.2, 1.3, 1.4),
    betas: Sequence[float] = (1.0, 1.05, 1.1, 1.15, 1.2),
    target: float = 2.0,
    phi: float = 1.0,
) -> CoefficientSearch:
    """The paper's step 1: fix phi = 1 and grid-search alpha, beta, gamma under alpha*beta^2*gamma^2 = 2.

    For each (alpha, beta) of the grid, gamma is solved from the constraint (skipped when it would
    be < 1), so every candidate spends the same budget and only its split differs. `evaluate`
    receives the scaled spec (at its new resolution) and returns its accuracy: typically build,
    train briefly on data resized to `spec.resolution`, and evaluate. Candidates that round to
    the same network are evaluated once. Ties keep the first candidate in grid order."""
    best: CoefficientSearch | None = None
    seen: dict[str, float] = {}
    trials: list[dict[str, Any]] = []
    for alpha in alphas:
        for beta in betas:
            gamma_squared = target / (alpha * beta**2)
            if gamma_squared < 1.0:
                continue
            gamma = math.sqrt(gamma_squared)
            spec = compound_scale(base, alpha, beta, gamma, phi, target=target, tolerance=1e-9)
            key = spec.content_hash()
            if key not in seen:
                seen[key] = float(evaluate(spec))
                logger.info("alpha %.3f beta %.3f gamma %.3f -> %s: accuracy %.4f", alpha, beta, gamma,
                            spec.name, seen[key])
            accuracy = seen[key]
            trials.append({"alpha": alpha, "beta": beta, "gamma": gamma, "resolution": spec.resolution,
                           "blocks": len(spec.blocks), "macs": macs_of_spec(spec), "spec_hash": key,
                           "accuracy": accuracy})
            if best is None or accuracy > best.accuracy:
                best = CoefficientSearch(alpha, beta, gamma, accuracy)
    if best is None:
        raise ValueError(f"no (alpha, beta) in the grid leaves gamma >= 1 for target {target}: alphas={alphas}, betas={betas}")
    best.trials = trials
    return best


@dataclass
class PhiFit:
    """Result of `fit_phi_to_budget`: the chosen phi, its spec and predicted latency, and every phi tried."""

    phi: float
    spec: ArchSpec
    latency_ms: float
    tried: list[tuple[float, float]] = field(default_factory=list)  # (phi, latency_ms)


HOPELESS = 1.5  # the smallest grid point this far over the budget ends the fit at once


def fit_phi_to_budget(
    base: ArchSpec,
    alpha: float,
    beta: float,
    gamma: float,
    predictor: LatencyPredictor,
    budget_ms: float,
    *,
    phi_min: float = 0.0,
    phi_max: float = 4.0,
    phi_step: float = 0.1,
) -> PhiFit:
    """The largest phi on the grid phi_min, phi_min + step, ..., phi_max whose scaled spec's
    latency is <= budget_ms.

    `predictor` is a callable spec -> ms (e.g. a function measuring the built model) or an object
    with `.predict(spec)` such as a `LatencyTable` (which raises `MissingEntriesError` for layers
    it has not measured: scaled widths are rarely in a search space's table). Every grid point is
    predicted, because rounding makes latency only roughly monotone in phi; for an expensive
    measured predictor use a coarse step."""
    budget_ms = _check_positive("budget_ms", budget_ms)
    if phi_step <= 0 or phi_max < phi_min:
        raise ValueError(f"need phi_step > 0 and phi_max >= phi_min (got {phi_step}, {phi_min}..{phi_max})")
    predict = predictor.predict if hasattr(predictor, "predict") else predictor
    steps = math.floor((phi_max - phi_min) / phi_step + 1e-9)
    cache: dict[str, float] = {}
    tried: list[tuple[float, float]] = []
    best: PhiFit | None = None
    for step in range(steps + 1):
        phi = round(phi_min + step * phi_step, 10)
        spec = compound_scale(base, alpha, beta, gamma, phi, tolerance=None)
        key = spec.content_hash()
        if key not in cache:
            cache[key] = float(predict(spec))
        latency = cache[key]
        tried.append((phi, latency))
        if step == 0 and latency > HOPELESS * budget_ms:
            # the smallest network is far over: larger phi only grow (up to rounding), so say no now
            # instead of measuring the whole grid
            raise OptionError(f"budget_ms={budget_ms} ms is out of reach: the smallest scaling (phi={phi}) already "
                              f"takes {latency:.3f} ms; lower phi_min or raise the budget")
        if latency <= budget_ms:
            best = PhiFit(phi, spec, latency)
    if best is None:
        fastest = min(latency for _, latency in tried)
        raise OptionError(f"no phi in [{phi_min}, {phi_max}] meets budget_ms={budget_ms} ms (fastest: {fastest:.3f} ms); "
                         "lower phi_min (negative phi shrinks the network)")
    best.tried = tried
    logger.info("phi %.2f: %s at %.3f ms (budget %.3f ms)", best.phi, best.spec.name, best.latency_ms, budget_ms)
    return best
