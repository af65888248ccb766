"""The ProxylessNAS supernet (Cai, Zhu, Han, ICLR 2019): mixed layers whose candidates are the
space's own blocks, path binarization, the binary-gate gradient estimator and the expected latency.

Modes of a forward pass (set by `sample` / `fix`):

- ``single``: one path per slot, drawn from softmax(alpha) (a weight step, paper Sec. 3.2). Only
  the active candidate of each mixed layer runs, so activations are those of one plain network.
- ``two``: the architecture step of the paper's "two paths" variant (Sec. 3.2.1). Two paths per
  slot are drawn from the multinomial without replacement and one of them is made active with
  the probabilities renormalised over the pair. The output is ``g_a * o_a + g_b * o_b`` with
  binary gates ``g`` (``g_a = 1``, ``g_b = 0``) that require grad, so backward yields
  ``dL/dg_j = <dL/dout, o_j>`` for both. ``o_a`` runs with autograd; ``o_b`` is only needed as a
  value, so it runs under ``no_grad`` and keeps no activations: memory is one path plus one
  output tensor per layer.
- ``all``: DARTS-style reference: every candidate runs, weighted by softmax(alpha).

`gate_gradient_to_alpha` turns gate gradients into logit gradients (BinaryConnect-style, paper
Eq. 4, restricted to the sampled paths), `rescale_sampled_logits` keeps the unsampled paths'
probabilities unchanged after an update, and `LatencyModel` is E[LAT] from a `LatencyTable`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from nas.oneshot.layout import MixedLayerSpec, SupernetLayout
from predictors.latency import LatencyTable, MissingEntriesError
from search_spaces.build import build_layer

__all__ = ["MODES", "LatencyModel", "MixedLayer", "Supernet", "gate_gradient_to_alpha", "rescale_sampled_logits",
           "restricted_probabilities"]

logger = logging.getLogger(__name__)

MODES = ("single", "two", "all")


class MixedLayer(nn.Module):
    """One supernet position: a candidate module per option of its slot (`nn.Identity` for skip),
    each built by the space's block registry from the layout's `LayerShape`."""

    def __init__(self, spec: MixedLayerSpec) -> None:
        super().__init__()
        self.name = spec.name
        self.slot = spec.slot
        self.candidates = nn.ModuleList(build_layer(shape) if shape is not None else nn.Identity()
                                        for shape in spec.candidates)


class Supernet(nn.Module):
    """Stem, mixed layers, head, and one logit vector per slot (`alphas`, initialised to zero:
    every path equally likely). The sampled paths live on the module between `sample` and the
    backward pass; nothing here draws random numbers except through the generator it is given."""

    def __init__(self, layout: SupernetLayout) -> None:
        super().__init__()
        self.layout = layout
        self.stem = build_layer(layout.stem)
        self.layers = nn.ModuleList(MixedLayer(spec) for spec in layout.layers)
        self.head = build_layer(layout.head)
        self.alphas = nn.ParameterList(nn.Parameter(torch.zeros(slot.size)) for slot in layout.slots)
        self.mode = "single"
        self.active: list[int] = [0] * len(layout.slots)
        self.inactive: list[int | None] = [None] * len(layout.slots)
        self.gates: list[Tensor] = []

    # -- parameters --------------------------------------------------------------------------------
    def weight_parameters(self) -> list[nn.Parameter]:
        alpha_ids = {id(alpha) for alpha in self.alphas}
        return [p for p in self.parameters() if id(p) not in alpha_ids]

    def probabilities(self) -> list[Tensor]:
        """softmax(alpha) per slot, differentiable."""
        return [torch.softmax(alpha, dim=0) for alpha in self.alphas]

    def argmax_choices(self) -> list[int]:
        # torch.argmax returns the first of equal maxima: ties resolve to the lower option index
        return [int(torch.argmax(alpha.detach()).item()) for alpha in self.alphas]

    # -- paths -------------------------------------------------------------------------------------
    def sample(self, mode: str, generator: torch.Generator) -> None:
        """Draw the paths of the next forward pass (`mode` in `MODES`). Sampling runs on CPU from
        `generator`, so it is reproducible whatever device the model is on."""
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} not in {MODES}")
        self.mode = mode
        self.gates = []
        if mode == "all":
            return
        for s, alpha in enumerate(self.alphas):
            probs = torch.softmax(alpha.detach().double().cpu(), dim=0)
            if mode == "single" or len(probs) == 1:
                self.active[s] = int(torch.multinomial(probs, 1, generator=generator).item())
                self.inactive[s] = None
            else:
                pair = torch.multinomial(probs, 2, replacement=False, generator=generator)
                within = torch.softmax(alpha.detach().double().cpu()[pair], dim=0)
                first = int(torch.multinomial(within, 1, generator=generator).item())
                self.active[s], self.inactive[s] = int(pair[first]), int(pair[1 - first])
            if mode == "two":
                gate = torch.zeros_like(alpha.detach())
                gate[self.active[s]] = 1.0
                self.gates.append(gate.requires_grad_(True))

    def fix(self, choices: Sequence[int]) -> None:
        """Run exactly these options (one per slot) from now on, e.g. the argmax network."""
        self.mode = "single"
        self.active = self.layout.check_choices(choices)
        self.inactive = [None] * len(self.active)
        self.gates = []

    def sampled_paths(self, slot: int) -> list[int]:
        """The options of `slot` the current `two`-mode step involves (active first)."""
        other = self.inactive[slot]
        return [self.active[slot]] if other is None else [self.active[slot], other]

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        probabilities = self.probabilities() if self.mode == "all" else None
        for layer in self.layers:
            s = layer.slot
            if probabilities is not None:
                weights = probabilities[s]
                x = sum(weights[i] * candidate(x) for i, candidate in enumerate(layer.candidates))
                continue
            active, other = self.active[s], self.inactive[s]
            out = layer.candidates[active](x)
            if self.mode == "two" and other is not None:
                with torch.no_grad():  # only its value enters dL/dg_other; no activations kept
                    other_out = layer.candidates[other](x)
                gate = self.gates[s]
                out = gate[active] * out + gate[other] * other_out
            x = out
        return self.head(x)


def restricted_probabilities(alpha: Tensor, paths: Sequence[int]) -> Tensor:
    """softmax over `paths` only, zero elsewhere (the paper's "reset" distribution of a two-path
    step); differentiable in the sampled logits only."""
    index = torch.as_tensor(list(paths), device=alpha.device)
    out = torch.zeros_like(alpha)
    return out.index_put((index,), torch.softmax(alpha[index], dim=0))


@torch.no_grad()
def gate_gradient_to_alpha(gate_grad: Tensor, alpha: Tensor, paths: Sequence[int]) -> Tensor:
    """dL/dalpha_i = sum_{j in paths} dL/dg_j * p_j * (delta_ij - p_i) for i in `paths`, 0 elsewhere,
    with p = softmax(alpha[paths]) (paper Eq. 4; all paths give the full estimator).
    The sum simplifies to p_i * (dL/dg_i - sum_j p_j dL/dg_j)."""
    index = torch.as_tensor(list(paths), device=alpha.device)
    p = torch.softmax(alpha.detach()[index], dim=0)
    g = gate_grad[index].to(p.dtype)
    out = torch.zeros_like(alpha)
    out[index] = p * (g - (p * g).sum())
    return out


@torch.no_grad()
def rescale_sampled_logits(alpha: Tensor, paths: Sequence[int], before: Tensor) -> None:
    """Shift the updated logits of `paths` so that sum(exp) over them equals its value `before`
    the update: the partition function is unchanged, so every unsampled path keeps its
    probability (paper Sec. 3.2.1, "rescale ... to keep the path weights of unsampled paths")."""
    index = torch.as_tensor(list(paths), device=alpha.device)
    offset = torch.logsumexp(alpha[index], dim=0) - torch.logsumexp(before[index], dim=0)
    alpha[index] -= offset


class LatencyModel:
    """E[LAT] = fixed + sum over slots of p_s . latency_s, with latency_s[o] the summed costs of the
    slot's layers under option o (0 for skip) and fixed the stem, the head and the calibration's
    intercept. A layer's cost is `table.layer_ms`: its entry, or its share of the table's
    calibration, which is a sum over layers too. With one-hot p it equals
    `table.predict(layout.derive(choices))` exactly."""

    def __init__(self, layout: SupernetLayout, table: LatencyTable) -> None:
        keys = [layout.stem.signature, layout.head.signature]
        keys += [c.signature for layer in layout.layers for c in layer.candidates if c is not None]
        missing = sorted({key for key in keys if key not in table})
        if missing:
            raise MissingEntriesError(missing, table.label)
        self.fixed_ms = table.layer_ms(layout.stem) + table.layer_ms(layout.head) + table.intercept_ms
        per_slot = [[0.0] * slot.size for slot in layout.slots]
        for layer in layout.layers:
            for option, candidate in enumerate(layer.candidates):
                if candidate is not None:
                    per_slot[layer.slot][option] += table.layer_ms(candidate)
        self.slot_ms = per_slot
        self._vectors: dict[torch.device, list[Tensor]] = {}

    def vectors(self, device: torch.device) -> list[Tensor]:
        if device not in self._vectors:
            self._vectors[device] = [torch.tensor(v, dtype=torch.float32, device=device) for v in self.slot_ms]
        return self._vectors[device]

    def expected_ms(self, probabilities: Sequence[Tensor]) -> Tensor:
        vectors = self.vectors(probabilities[0].device)
        return self.fixed_ms + sum((p * v).sum() for p, v in zip(probabilities, vectors))

    def of_choices(self, choices: Sequence[int]) -> float:
        return self.fixed_ms + sum(v[c] for v, c in zip(self.slot_ms, choices))

    def most_likely_within(self, probabilities: Sequence[Tensor], target_ms: float, tolerance: float,
                           bins_per_slot: int = 8) -> list[int] | None:
        """The most probable network (max sum of log p over slots) whose latency lies within
        target * (1 +- tolerance); None when no network does. Exact over the slots, which add up
        independently: a dynamic programme over the latency discretised into steps of
        tolerance * target / (bins_per_slot * slots), whose rounding is then checked exactly."""
        low = target_ms * (1 - tolerance) - self.fixed_ms  # window of the slots' sum
        high = target_ms * (1 + tolerance) - self.fixed_ms
        step = max(high - low, 1e-9) / (bins_per_slot * len(self.slot_ms))
        size = int(sum(max(v) for v in self.slot_ms) / step) + 2
        score = np.full(size, -np.inf)
        score[0] = 0.0
        back = np.zeros((len(self.slot_ms), size), dtype=np.int64)
        for s, (latencies, p) in enumerate(zip(self.slot_ms, probabilities)):
            log_p = np.log(np.clip(p.detach().double().cpu().numpy(), 1e-12, None))
            best = np.full(size, -np.inf)
            for option, latency in enumerate(latencies):
                shift = round(latency / step)
                candidate = np.full(size, -np.inf)
                candidate[shift:] = score[:size - shift] + log_p[option]
                better = candidate > best
                best[better], back[s][better] = candidate[better], option
            score = best
        slack = step * len(self.slot_ms) / 2  # the most the rounded sum can be off
        sums = np.arange(size) * step
        inside = np.flatnonzero(np.isfinite(score) & (sums >= low - slack) & (sums <= high + slack))
        for index in inside[np.argsort(-score[inside], kind="stable")]:  # most probable first
            choices, position = [], int(index)
            for s in range(len(self.slot_ms) - 1, -1, -1):
                option = int(back[s][position])
                choices.append(option)
                position -= round(self.slot_ms[s][option] / step)
            choices.reverse()
            if abs(self.of_choices(choices) - target_ms) <= tolerance * target_ms + 1e-12:
                return choices
        return None

    def fastest_choices(self) -> list[int]:
        """Per-slot argmin: the fastest network (slots add up independently)."""
        return [min(range(len(v)), key=v.__getitem__) for v in self.slot_ms]
