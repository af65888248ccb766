"""Which ranks: a `RankPolicy` (layer -> rank, the compression-policy envelope of kind "lowrank")
and the two ways to choose one.

Layers are named `<part>.<conv>`: "stem.0", "blocks.3.expand", "blocks.5.conv_a", "head.conv",
"head.classifier" (the conv names of `search_spaces.lowrank_layers.layer_paths`). A value is a rank
(SVD) or [r_in, r_out] (Tucker-2, k x k convs only).

- `energy_policy`: per layer the smallest rank whose singular values hold >= `energy` of the
  squared sum (Tucker-2: per mode, on the output- and input-mode unfoldings).
- `latency_policy`: greedy under a latency budget. Every layer has a ladder of ranks (those of
  `LADDER` energies); all start unfactorized. Each step moves the one layer whose next rung saves
  the most predicted latency per unit of energy lost (the fraction of its squared singular values
  dropped), until the predicted latency (sum of per-layer table entries) fits the budget. A layer's
  next rung is the nearest lower one that lowers the prediction at all (at small widths a factorized
  conv, two kernels launched instead of one, can be slower until its rank is cut further).

Both leave a layer alone when no rank saves MACs: a rank r saves only if r (c_in k k + d) <
d c_in k k (SVD; Tucker-2: c_in r_in s^2 + r_in r_out k k + r_out d < d c_in k k at stride s),
which excludes thin layers and small fan-ins unless the energy is low (a 3 x 3 stem on RGB needs
r < 27 d / (27 + d)); grouped and depthwise convs have no rank to cut. Each skipped layer is reported with its reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from compress.policy import PolicyEnvelope, PolicyError, check_layers
from search_spaces.build import LayerShape, layer_shapes
from search_spaces.lowrank_layers import full_ranks, layer_paths, why_not_factorizable
from search_spaces.spec import ArchSpec

__all__ = ["KIND", "LADDER", "METHODS", "LayerInfo", "RankPolicy", "energy_policy", "energy_rank", "factorizable",
           "latency_policy", "saves_macs"]

KIND = "lowrank"
METHODS = ("svd", "tucker2")
LADDER = (0.99, 0.97, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)


@dataclass(frozen=True)
class LayerInfo:
    name: str           # "blocks.3.expand"
    part: str           # "blocks.3" | "head"
    conv: str           # "expand"
    module: nn.Module   # the trained layer (a conv or a linear)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(d, c_in, k, stride); a linear is a 1x1 conv at stride 1."""
        m = self.module
        if isinstance(m, nn.Linear):
            return m.out_features, m.in_features, 1, 1
        return m.out_channels, m.in_channels, m.kernel_size[0], m.stride[0]


def factorizable(model: nn.Module) -> tuple[dict[str, LayerInfo], dict[str, str]]:
    """(layers that may be factorized, layer -> why not) of a `Network`, in network order."""
    spec: ArchSpec = model.spec
    if any(b.ranks for b in spec.blocks) or spec.head.ranks or spec.stem.ranks:
        raise PolicyError(f"{KIND} policy: the source is already low-rank; factorize the original network")
    parts = [("stem", model.stem), *((f"blocks.{i}", model.blocks[i]) for i in range(len(spec.blocks))),
             ("head", model.head)]
    layers, reasons = {}, {}
    for part, module in parts:
        for conv, path in layer_paths(module).items():
            layer = module.get_submodule(path)
            reason = why_not_factorizable(layer)
            if reason:
                reasons[f"{part}.{conv}"] = reason
            else:
                layers[f"{part}.{conv}"] = LayerInfo(f"{part}.{conv}", part, conv, layer)
    return layers, reasons


def saves_macs(info: LayerInfo, ranks: tuple[int, ...]) -> bool:
    d, c, k, s = info.shape
    if len(ranks) == 1:
        return ranks[0] * (c * k * k + d) < d * c * k * k
    r_in, r_out = ranks
    return c * r_in * s * s + r_in * r_out * k * k + r_out * d < d * c * k * k


def _check_ranks(info: LayerInfo, value: Any) -> tuple[int, ...]:
    ranks = (value,) if isinstance(value, int) and not isinstance(value, bool) else value
    full = full_ranks(info.module)
    if not isinstance(ranks, (list, tuple)) or len(ranks) not in (1, 2) or any(
            isinstance(r, bool) or not isinstance(r, int) for r in ranks):
        raise PolicyError(f"{KIND} policy: {info.name}={value!r} must be a rank (int) or [r_in, r_out]")
    if len(ranks) == 2 and len(full) == 1:
        raise PolicyError(f"{KIND} policy: {info.name}={list(ranks)}: Tucker-2 ranks need a k x k conv (k > 1); "
                          f"give one rank in [1, {full[0]}]")
    bounds = full[:1] if len(ranks) == 1 else full[1:]
    for rank, bound in zip(ranks, bounds):
        if not 1 <= rank <= bound:
            raise PolicyError(f"{KIND} policy: {info.name}={value!r} out of range; allowed: ranks in [1, {bound}] "
                              f"(full rank {bound})")
    return tuple(ranks)


@dataclass(frozen=True)
class RankPolicy:
    """Layer -> ranks ((r,) SVD, (r_in, r_out) Tucker-2); `settings` record how they were chosen."""

    ranks: dict[str, tuple[int, ...]]
    settings: dict[str, Any] = field(default_factory=dict)

    def validate(self, model: nn.Module) -> None:
        """Every layer must be a factorizable layer of `model` and every rank in [1, full rank]."""
        layers, reasons = factorizable(model)
        check_layers(KIND, self.ranks, {**reasons, **dict.fromkeys(layers)})
        for name, value in self.ranks.items():
            _check_ranks(layers[name], value)

    def apply(self, spec: ArchSpec) -> ArchSpec:
        """`spec` with the ranks in its blocks' and head's `ranks` fields."""
        by_part: dict[str, dict[str, tuple[int, ...]]] = {}
        for name, ranks in self.ranks.items():
            part, conv = _split(name)
            by_part.setdefault(part, {})[conv] = ranks
        blocks = [replace(b, ranks={**dict(b.ranks), **by_part[f"blocks.{i}"]}) if f"blocks.{i}" in by_part else b
                  for i, b in enumerate(spec.blocks)]
        head, stem = ((replace(p, ranks={**dict(p.ranks), **by_part[key]}) if key in by_part else p)
                      for p, key in ((spec.head, "head"), (spec.stem, "stem")))
        return spec.replace(blocks=tuple(blocks), head=head, stem=stem)

    def to_envelope(self) -> PolicyEnvelope:
        layers = {name: r[0] if len(r) == 1 else list(r) for name, r in self.ranks.items()}
        return PolicyEnvelope(KIND, layers, dict(self.settings))

    def save(self, path: Any) -> None:
        self.to_envelope().save(path)

    @classmethod
    def from_envelope(cls, envelope: PolicyEnvelope, model: nn.Module) -> RankPolicy:
        """Read and check the layers of a "lowrank" envelope against `model`."""
        layers, reasons = factorizable(model)
        check_layers(KIND, envelope.layers, {**reasons, **dict.fromkeys(layers)})
        return cls({name: _check_ranks(layers[name], value) for name, value in envelope.layers.items()},
                   dict(envelope.settings))

    @classmethod
    def load(cls, path: Any, model: nn.Module) -> RankPolicy:
        return cls.from_envelope(PolicyEnvelope.load(path, KIND), model)


def _split(name: str) -> tuple[str, str]:
    """"blocks.3.se.reduce" -> ("blocks.3", "se.reduce"); "head.conv" -> ("head", "conv")."""
    if name.startswith(("head.", "stem.")):
        return name[:4], name[5:]
    kind, index, conv = name.split(".", 2)
    return f"{kind}.{index}", conv


def _spectra(info: LayerInfo, method: str) -> list[torch.Tensor]:
    """Squared singular values, one spectrum per mode that gets a rank."""
    w = info.module.weight.detach().double()
    d, c = w.shape[:2]
    tucker = method == "tucker2" and len(full_ranks(info.module)) == 3
    unfoldings = [w.transpose(0, 1).reshape(c, -1), w.reshape(d, -1)] if tucker else [w.reshape(d, -1)]
    return [torch.linalg.svdvals(u) ** 2 for u in unfoldings]


def energy_rank(squared: torch.Tensor, energy: float) -> int:
    """The smallest r with s_1^2 + ... + s_r^2 >= energy * sum s_i^2."""
    cumulative = torch.cumsum(squared, 0) / squared.sum().clamp_min(1e-300)
    return int(torch.searchsorted(cumulative, torch.tensor(energy, dtype=cumulative.dtype) - 1e-12).item()) + 1


def _kept(spectra: list[torch.Tensor], ranks: tuple[int, ...]) -> float:
    """Energy kept, the smaller over the modes."""
    return min(float(s[:r].sum() / s.sum().clamp_min(1e-300)) for s, r in zip(spectra, ranks))


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise PolicyError(f"method={method!r} not in {{{', '.join(METHODS)}}}")


def energy_policy(model: nn.Module, energy: float, method: str = "svd") -> tuple[RankPolicy, dict[str, str]]:
    """Per layer the smallest rank keeping `energy` of the squared singular values; returns the
    policy and the skipped layers with their reasons."""
    _check_method(method)
    if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0 < energy <= 1:
        raise PolicyError(f"energy={energy!r} must be in (0, 1]")
    layers, skipped = factorizable(model)
    ranks = {}
    for name, info in layers.items():
        chosen = tuple(energy_rank(s, energy) for s in _spectra(info, method))
        if saves_macs(info, chosen):
            ranks[name] = chosen
        else:
            skipped[name] = f"rank {'x'.join(map(str, chosen))} (energy {energy:g}) saves no MACs"
    return RankPolicy(ranks, {"method": method, "energy": float(energy)}), skipped


def latency_policy(model: nn.Module, budget_ms: float, layer_ms: Callable[[LayerShape], float], method: str = "svd",
                   *, intercept_ms: float = 0.0) -> tuple[RankPolicy, dict[str, Any]]:
    """Greedy (see the module doc) until `intercept_ms` + sum of `layer_ms` over the network's
    layers is <= `budget_ms`. Returns the policy and a report (latency before/after, steps,
    layers never factorized and why)."""
    _check_method(method)
    if isinstance(budget_ms, bool) or not isinstance(budget_ms, (int, float)) or budget_ms <= 0:
        raise PolicyError(f"latency_budget={budget_ms!r} must be a positive number of ms")
    layers, skipped = factorizable(model)
    ladders: dict[str, list[tuple[tuple[int, ...], float]]] = {}
    for name, info in layers.items():
        spectra = _spectra(info, method)
        rungs = []
        for energy in LADDER:
            ranks = tuple(energy_rank(s, energy) for s in spectra)
            if saves_macs(info, ranks) and all(ranks != r for r, _ in rungs):
                rungs.append((ranks, 1.0 - _kept(spectra, ranks)))
        if rungs:
            ladders[name] = rungs
        else:
            skipped[name] = f"no rank down to energy {LADDER[-1]} saves MACs"
    cache: dict[str, float] = {}

    def predict(spec: ArchSpec) -> float:
        total = intercept_ms
        for layer in layer_shapes(spec):
            if layer.signature not in cache:
                cache[layer.signature] = layer_ms(layer)
            total += cache[layer.signature]
        return total

    spec: ArchSpec = model.spec
    position = dict.fromkeys(ladders, -1)
    policy = RankPolicy({}, {"method": method, "latency_budget_ms": float(budget_ms)})
    start = now = predict(spec)
    steps = 0
    while now > budget_ms:
        best = None
        for name, rungs in ladders.items():
            before = rungs[position[name]][1] if position[name] >= 0 else 0.0
            for rung in range(position[name] + 1, len(rungs)):  # its nearest rung that lowers the prediction
                ranks, lost = rungs[rung]
                trial = RankPolicy({**policy.ranks, name: ranks}, policy.settings)
                latency = predict(trial.apply(spec))
                if latency < now:
                    score = (now - latency) / max(lost - before, 1e-9)
                    if best is None or score > best[0]:
                        best = (score, name, trial, latency, rung)
                    break
        if best is None:
            raise PolicyError(f"latency_budget={budget_ms:g} ms is out of reach: no further rank cut (down to energy "
                              f"{LADDER[-1]}) lowers the predicted {now:.3f} ms (unfactorized {start:.3f} ms)")
        _, name, policy, now, position[name] = best
        steps += 1
    report = {"predicted_ms_before": start, "predicted_ms_after": now, "steps": steps,
              "skipped": {**skipped, **{n: "not needed to meet the budget" for n in ladders if position[n] < 0}}}
    return policy, report

