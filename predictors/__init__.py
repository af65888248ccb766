"""What an architecture COSTS: parameters and multiply-adds (`cost`), latency (`latency`)."""

from predictors.cost import Cost, LayerCost, count, layer_macs, layer_params, macs_of_spec, params_of_spec

__all__ = ["Cost", "LayerCost", "count", "layer_macs", "layer_params", "macs_of_spec", "params_of_spec"]
