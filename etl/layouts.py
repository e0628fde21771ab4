"""A declared layout fitted to one model: its blocks, the modules and weights of each canonical name.

``fit(model, layout)`` resolves every pattern of a ``layerlake.core.layouts.Layout`` against the model's
``named_modules()`` and ``named_parameters()`` once, when extraction or tracking starts: a pattern that
matches nothing fails naming the pattern (and what is there instead), a pattern that matches two
weights (or modules) for one site fails naming both, and head counts that do not divide the weights'
shapes fail naming the counts. A Hugging Face model without a layout gets its family's preset, by
``config.model_type``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from layerlake.core.choices import Tensor
from layerlake.core.errors import ConfigError
from layerlake.core.layouts import DOC, Layout, layout_of_type, load_layout, matching
from layerlake.etl.errors import ExtractionError


@dataclass(frozen=True)
class Shape:
    """The attention geometry of a model, read from its weights and head counts."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int

    @property
    def group(self) -> int:
        """Query heads per kv head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads


FIX = f"correct the layout's pattern ({DOC} says how to write one), or pass the layout that fits this model"


@dataclass
class BlockFit:
    """One block's modules and weights, as the layout names them."""

    index: int
    name: str  # the block's name in model.named_modules()
    module: nn.Module
    attention: nn.Module
    weights: dict[
        str, tuple[str, nn.Module, str]
    ]  # canonical matrix -> (weight name in the block, owner, attr)
    probs_module: nn.Module | None = None
    conv1d: bool = False

    def owner(self, matrix: str) -> nn.Module:
        """The module holding ``matrix``'s weight (its output is the site of ``dense``/``dense_4h_to_h``)."""
        return self.weights[matrix][1]

    def read(self, matrix: str, tensor: str = Tensor.weight) -> torch.Tensor | None:
        """``matrix``'s weight (or its ``.grad``, None if there is none) as (out_features, in_features)."""
        _, owner, attr = self.weights[matrix]
        param = getattr(owner, attr)
        t = param.detach() if tensor == Tensor.weight else param.grad
        return None if t is None else (t.T if self.conv1d else t)

    @property
    def value_matrix(self) -> str:
        """The canonical matrix whose weight holds V: ``value``, or the fused ``query_key_value``."""
        return "query_key_value" if "query_key_value" in self.weights else "value"

    def site_module(self, site: str) -> nn.Module:
        """The module whose output is captured for a capture name (``value``: the map holding V)."""
        if site == "resid_post":
            return self.module
        if site == "attn_out":
            return self.owner("dense")
        if site == "mlp_out":
            return self.owner("dense_4h_to_h")
        if site == "value":
            return self.owner(self.value_matrix)
        raise ExtractionError(f"no capture named {site!r}", fix="use a site of layerlake.core.choices.Site")


@dataclass
class Fit:
    """A layout fitted to a model: blocks in order, the attention geometry, and what the rows call it."""

    layout: Layout
    blocks: list[BlockFit]
    shape: Shape

    @property
    def architecture(self) -> str:
        return self.layout.name


def layout_for(model: nn.Module, layout: Layout | str | None = None) -> Layout:
    """The layout given (a layout, a preset name or a YAML path), else the Hugging Face family's preset."""
    try:
        if layout is not None:
            return load_layout(layout)
        config = getattr(model, "config", None)
        model_type = getattr(config, "model_type", None) if not isinstance(config, dict) else None
        return layout_of_type(model_type, where=f"{type(model).__name__}: " if model_type is None else "")
    except ConfigError as error:
        raise ExtractionError(error.message, fix=error.fix) from None


def layout_for_type(model_type: str | None, where: str = "") -> Layout:
    """The preset of a Hugging Face ``model_type`` (an ``ExtractionError`` naming the known ones if none)."""
    try:
        return layout_of_type(model_type, where)
    except ConfigError as error:
        raise ExtractionError(error.message, fix=error.fix) from None


def fit(model: nn.Module, layout: Layout | str | None = None) -> Fit:
    """Resolve every pattern of ``layout`` (default: the model's family preset) against ``model``."""
    layout = layout_for(model, layout)
    what = f"layout {layout.name!r} on {type(model).__name__}"
    modules = dict(model.named_modules())
    names = sorted(matching(layout.blocks, list(modules)), key=_block_order)
    if not names:
        raise ExtractionError(
            f"{what}: blocks pattern {layout.blocks!r} matched no module{_nearest(layout.blocks, list(modules))}",
            fix=FIX,
        )
    blocks = [_fit_block(i, name, modules[name], layout, what) for i, name in enumerate(names)]
    return Fit(layout, blocks, _shape(model, layout, blocks[0], len(blocks), what))


def _block_order(name: str) -> tuple:
    """Blocks by the number in their last name part (``layers.10`` after ``layers.9``), else by name."""
    last = name.rsplit(".", 1)[-1]
    return (0, int(last), name) if last.isdigit() else (1, 0, name)


def _one(pattern: str, role: str, names: list[str], block: str, what: str, kind: str) -> str:
    found = matching(pattern, names)
    if not found:
        raise ExtractionError(
            f"{what}: {role} pattern {pattern!r} matched no {kind} of block {block}{_nearest(pattern, names)}",
            fix=FIX,
        )
    if len(found) > 1:
        raise ExtractionError(
            f"{what}: {role} pattern {pattern!r} matches {len(found)} {kind}s of block {block} for one site: "
            f"{' and '.join(found)}",
            fix="make the pattern match exactly one of them (a longer, more specific pattern)",
        )
    return found[0]


def _fit_block(index: int, name: str, block: nn.Module, layout: Layout, what: str) -> BlockFit:
    params = [n for n, _ in block.named_parameters()]
    submodules = [n for n, _ in block.named_modules() if n]
    weights = {}
    for matrix, pattern in layout.weights().items():
        found = _one(pattern, _role(layout, matrix), params, name, what, "weight")
        owner_name, _, attr = found.rpartition(".")
        weights[matrix] = (found, block.get_submodule(owner_name) if owner_name else block, attr)
    attention = block.get_submodule(_one(layout.attention, "attention", submodules, name, what, "module"))
    probs = None
    if layout.probs_module:
        probs = block.get_submodule(
            _one(layout.probs_module, "probs_module", submodules, name, what, "module")
        )
    return BlockFit(index, name, block, attention, weights, probs, layout.conv1d)


def _role(layout: Layout, matrix: str) -> str:
    """The layout field that holds a canonical matrix's pattern (for messages)."""
    if matrix == "query_key_value":
        return "value (fused QKV)"
    if matrix == "dense":
        return "out"
    if matrix == "dense_4h_to_h":
        return "mlp_out"
    if matrix in dict(layout.mlp_in):
        return f"mlp_in.{matrix}"
    return matrix


def _nearest(pattern: str, names: list[str]) -> str:
    """``; names there like it: a, b, c`` (the names sharing the pattern's last literal part), or the first few."""
    literal = [p for p in re.split(r"[.*?]+", pattern) if p]
    close = [n for n in names if literal and literal[-1] in n][:6] or names[:6]
    return f"; names there: {', '.join(close)}{' ...' if len(names) > len(close) else ''}" if close else ""


def _heads(model: nn.Module, value: int | str | None, name: str, what: str) -> int | None:
    """A head count: a number, or read from an attribute path on the model (``config.n_head``)."""
    if value is None or isinstance(value, int):
        return value
    found: object = model
    for part in value.split("."):
        found = found.get(part) if isinstance(found, dict) else getattr(found, part, None)
        if found is None:
            raise ExtractionError(
                f"{what}: {name} path {value!r} finds nothing on the model (no {part!r})",
                fix=f"give {name} as a number, or the attribute path that holds it",
            )
    if isinstance(found, bool) or not isinstance(found, int) or found < 1:
        raise ExtractionError(f"{what}: {name} path {value!r} holds {found!r}, not a head count", fix=FIX)
    return found


def _shape(model: nn.Module, layout: Layout, block: BlockFit, n_layers: int, what: str) -> Shape:
    """Widths and heads, from the head counts and the first block's W_O and V weights; checked."""
    n_heads = _heads(model, layout.n_heads, "n_heads", what)
    n_kv = _heads(model, layout.n_kv_heads, "n_kv_heads", what) or n_heads
    w_o, w_v = block.read("dense"), block.read(block.value_matrix)
    d_model, inner = w_o.shape
    per_head = {"query_key_value": n_heads + 2 * n_kv, "value": n_kv}[block.value_matrix]
    d_head = w_v.shape[0] // per_head
    if n_heads % n_kv or inner != n_heads * d_head or w_v.shape[0] != per_head * d_head or d_head == 0:
        raise ExtractionError(
            f"{what}: {n_heads} heads and {n_kv} key/value heads do not fit W_O {tuple(w_o.shape)} and the "
            f"V weight {tuple(w_v.shape)} (read as (out, in), orientation {layout.orientation})",
            fix="check n_heads / n_kv_heads and the weights' orientation (linear or conv1d) in the layout",
        )
    return Shape(n_layers, d_model, n_heads, n_kv, d_head)
