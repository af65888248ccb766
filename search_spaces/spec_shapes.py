"""The shapes a spec implies: the map size a stem or block makes of its input, and what a block
needs of its input width and size beyond its own fields.

Its own module so that the spec (`spec.py`), the builder and the cost counters share one rule for
every size; it reads parts by their fields and never imports the spec.
"""

from __future__ import annotations

from typing import Any

from search_spaces.spec_vocabulary import Op, SpecError

__all__ = ["block_output_size", "check_block_input", "conv_output_size", "stem_output_size"]


def conv_output_size(size: int, stride: int) -> int:
    """Spatial size after a 'same'-padded odd-kernel conv (or 3x3/s2/p1 max-pool)."""
    return (size - 1) // stride + 1


def stem_output_size(stem: Any, size: int) -> int:
    """The stem conv (padded `stem.padding`, 'same' when None), then its optional 3x3/s2/p1 max-pool."""
    padding = stem.kernel // 2 if stem.padding is None else stem.padding
    size = (size + 2 * padding - stem.kernel) // stem.stride + 1
    return conv_output_size(size, 2) if stem.pool else size


def block_output_size(block: Any, size: int) -> int:
    """A strided fire module max-pools 3x3/s2 unpadded in ceil mode first (SqueezeNet's pooling,
    as torchvision builds it): ceil((size - 3) / 2) + 1 = size // 2. Every other block is 'same'."""
    if block.op is Op.FIRE and block.stride == 2:
        return size // 2
    return conv_output_size(size, block.stride)


def check_block_input(block: Any, in_channels: int, in_size: int, path: str) -> None:
    """What a block needs of its input beyond its own fields."""
    if block.op is Op.SHUFFLE and block.stride == 1 and in_channels != block.out_channels:
        raise SpecError(
            f"{path}.out_channels={block.out_channels} must equal its input width {in_channels} "
            "for a stride-1 'shuffle' unit (use stride 2 to change width)"
        )
    if block.op is Op.SHUFFLE_V1 and (in_channels != block.out_channels if block.stride == 1
                                      else in_channels >= block.out_channels):
        rule = "equal" if block.stride == 1 else "exceed"
        raise SpecError(f"{path}.out_channels={block.out_channels} must {rule} its input width "
                        f"{in_channels} for a stride-{block.stride} 'shufflev1' unit")
    if block.groups > 1:
        _check_groups(block, in_channels, path)
    if block.op is Op.CELL and in_channels != block.out_channels:
        # NB201 changes width only in its reduction blocks; its cells map C to C on every edge
        raise SpecError(f"{path}.out_channels={block.out_channels} must equal its input width {in_channels} "
                        "for a 'cell' (change width with a 'resblock')")
    if block.op is Op.RESBLOCK and block.stride == 2 and in_size % 2:
        # the 2x2 average-pool shortcut floors an odd size, the strided 3x3 conv rounds it up
        raise SpecError(f"{path}: a stride-2 'resblock' needs an even input size, got {in_size}x{in_size}")
    if block.op is Op.FIRE and block.stride == 2 and in_size < 3:
        raise SpecError(f"{path}: a stride-2 'fire' module max-pools 3x3 unpadded and needs an input of at "
                        f"least 3x3, got {in_size}x{in_size}")


def _check_groups(block: Any, channels: int, path: str) -> None:
    """Grouped 1x1 convs need every width they touch divisible by the groups."""
    mid = block.mid(channels)
    out = block.out_channels - (channels if block.op is Op.SHUFFLE_V1 and block.stride == 2 else 0)
    grouped_in = not (block.op is Op.SHUFFLE_V1 and channels < mid)  # see blocks.ShuffleV1Unit
    for name, width in (("input width", channels if grouped_in else mid), ("inner width", mid),
                        ("output width", out)):
        if width < 1 or width % block.groups:
            raise SpecError(f"{path}.groups={block.groups} does not divide its {name} {width}")
