"""Compact, human-readable block strings in timm's spirit: `mb_k5_e6_c40_s2_se0.25_relu`; a
NAS-Bench-201 cell lists its 6 edge ops as indices into `CELL_OPS`: `cell_c16_o310234_relu`.

Parsed from a table of field codes (not an if/elif chain), and exact round trips:
`BlockSpec.from_string(block.to_string()) == block`. The codec reads and yields plain fields, not
`BlockSpec`s, so that `spec.py` can use it without this module importing the spec back.
"""

from __future__ import annotations

from typing import Any

from search_spaces.spec_fields import ranks_from_string, ranks_to_string
from search_spaces.spec_vocabulary import CELL_OPS, Activation, Op, SEStyle, SpecError

_OP_CODES = {Op.MBCONV: "mb", Op.SHUFFLE: "sh", Op.GHOST: "gh", Op.DSCONV: "ds", Op.CELL: "cell", Op.RESBLOCK: "rb",
             Op.IRF: "irf", Op.PW: "pw", Op.SHUFFLE_V1: "sv1", Op.FIRE: "fire"}
# fields an op fixes (validation holds them at their defaults), so its string leaves them out
_FIXED_FIELDS = {Op.CELL: {"kernel", "expand_ratio", "stride"}, Op.RESBLOCK: {"expand_ratio"}}
# a cell's edges as one piece, `o` + one digit per edge: the op's index in NB201's op list
_EDGES_CODE = "o"
_SE_STYLE_CODES = {SEStyle.EFFICIENTNET: "", SEStyle.MOBILENETV3: "v3", SEStyle.GHOSTNET: "g"}

# field code -> (BlockSpec field, parser, formatter); order is the order they are printed in
_FIELD_CODES: dict[str, tuple[str, Any, Any]] = {
    "k": ("kernel", int, str),
    "e": ("expand_ratio", float, lambda v: f"{v:g}"),
    "m": ("mid_channels", int, str),
    "c": ("out_channels", int, str),
    "s": ("stride", int, str),
    "g": ("groups", int, str),  # printed only when not 1, so older blocks' strings are unchanged
}


def block_to_string(block: Any) -> str:
    """`block` is a `BlockSpec` (any object with its fields)."""
    parts = [_OP_CODES[block.op]]
    fixed = _FIXED_FIELDS.get(block.op, set())
    for code, (name, _, fmt) in _FIELD_CODES.items():
        value = getattr(block, name)
        if value is None or name in fixed or (name == "expand_ratio" and block.mid_channels is not None) or (
                name == "groups" and value == 1):
            continue
        parts.append(f"{code}{fmt(value)}")
    if block.edges:
        parts.append(_EDGES_CODE + "".join(str(CELL_OPS.index(op)) for op in block.edges))
    if block.se_ratio:
        parts.append(f"se{_SE_STYLE_CODES[block.se_style]}{block.se_ratio:g}")
    parts.append(block.activation.value)
    if block.ranks:  # last, bracketed: conv names may hold underscores (`conv_a`)
        parts.append(ranks_to_string(block.ranks))
    return "_".join(parts)


def block_fields_from_string(text: str) -> dict[str, Any]:
    """The `BlockSpec` fields a block string names; the spec validates them."""
    text = text.strip()
    ranks = None
    if text.endswith("]") and "_lr[" in text:
        text, _, inside = text[:-1].rpartition("_lr[")
        ranks = ranks_from_string(inside, f"block string {text!r}: ranks")
    pieces = text.split("_")
    ops = {code: op for op, code in _OP_CODES.items()}
    if not pieces or pieces[0] not in ops:
        raise SpecError(f"block string {text!r}: op code {pieces[0]!r} not in {{{', '.join(ops)}}}")
    values: dict[str, Any] = {"op": ops[pieces[0]]}
    activations = {a.value for a in Activation}
    styles = {code: style for style, code in _SE_STYLE_CODES.items()}
    for piece in pieces[1:]:
        if piece in activations:
            values["activation"] = piece
        elif piece.startswith("se"):
            rest = piece[2:]
            code = next((c for c in sorted(styles, key=len, reverse=True) if c and rest.startswith(c)), "")
            values["se_style"] = styles[code]
            values["se_ratio"] = _parse(float, rest[len(code):], text, "se")
        elif piece[:1] == _EDGES_CODE and piece[1:].isdigit():
            digits = [int(d) for d in piece[1:]]
            if max(digits) >= len(CELL_OPS):
                raise SpecError(f"block string {text!r}: edge op digits in {piece!r} must be 0..{len(CELL_OPS) - 1}")
            values["edges"] = tuple(CELL_OPS[d] for d in digits)
        elif piece[:1] in _FIELD_CODES:
            name, parse, _ = _FIELD_CODES[piece[:1]]
            values[name] = _parse(parse, piece[1:], text, piece[:1])
        else:
            raise SpecError(
                f"block string {text!r}: unknown part {piece!r}; codes are "
                f"{', '.join(_FIELD_CODES)}, {_EDGES_CODE}<edge ops>, se<ratio>, and an activation "
                f"({', '.join(sorted(activations))})"
            )
    if ranks:
        values["ranks"] = ranks
    if "out_channels" not in values:
        raise SpecError(f"block string {text!r}: missing output channels (c<N>)")
    return values


def _parse(parse: Any, raw: str, text: str, code: str) -> Any:
    try:
        return parse(raw)
    except ValueError:
        raise SpecError(f"block string {text!r}: {code}{raw!r} is not a valid {parse.__name__}") from None
