"""What an architecture IS: specs, blocks, the builder, search spaces and the reference zoo."""

from search_spaces.blocks import BLOCKS, build_block, make_divisible
from search_spaces.build import LayerShape, Network, build_head, build_layer, build_model, build_stem, layer_shapes
from search_spaces.errors import DatasetError, DeviceError, InputFileError, OptionError, UnknownNameError, UserError
from search_spaces.lowrank_layers import SVDConv, SVDLinear, Tucker2Conv, factorizable_layers
from search_spaces.registry import Registry
from search_spaces.small_input import final_map_size, small_input
from search_spaces.spec import Activation, ArchSpec, BlockSpec, HeadSpec, Op, SEStyle, SpecError, StemSpec

__all__ = [
    "BLOCKS",
    "Activation",
    "ArchSpec",
    "BlockSpec",
    "DatasetError",
    "DeviceError",
    "HeadSpec",
    "InputFileError",
    "LayerShape",
    "Network",
    "Op",
    "OptionError",
    "Registry",
    "SEStyle",
    "SpecError",
    "StemSpec",
    "SVDConv",
    "SVDLinear",
    "Tucker2Conv",
    "UnknownNameError",
    "UserError",
    "build_block",
    "build_head",
    "build_layer",
    "build_model",
    "build_stem",
    "factorizable_layers",
    "final_map_size",
    "layer_shapes",
    "make_divisible",
    "small_input",
]
