"""The gradient of the loss with respect to each head's OV product, from hooks on the gradient pass.

A head's OV product ``M_h = W_O_h W_V_h`` (d_model x d_model) is no parameter, but the loss depends on it
as if it were: the attention output is ``o_i = sum_h M_h (A_h X)_i + (terms without M_h)`` with
``(A_h X)_i = sum_j A_h[i, j] x_j`` (x_j: the value map's input at position j, A_h: head h's attention
probabilities). So its gradient is

    G_h = dL/dM_h = sum_i delta_i (A_h X)_i^T = sum_s (A_h,s^T Delta_s)^T X_s

with ``delta_i`` the gradient at W_O's output (d_model). Hooks take, per layer and per micro-batch: X (the
input of the map holding V), the probabilities' ingredients (the q, k, mask and scale given to
``torch.nn.functional.scaled_dot_product_attention`` inside the attention module, or the probabilities
themselves where the module returns them), and Delta (a hook on W_O's output tensor). When the backward
reaches a layer, its G_h is reduced at once, head by head, and the layer's captures are freed: memory
beyond the pass is one head's (batch, T, T) probabilities and (batch, T, d_model) product at a time,
never A of every layer. The bias of V adds ``W_O_h b_V_h`` to every output (rows of A sum to 1), a
path outside M_h: ``dL/dW_O_h = G_h W_V_h^T + (sum_i delta_i) b_V_h^T``.

Recomputed probabilities are checked against the model's own attention output (``A_h V_h`` must equal
what SDPA returned, per head), so an attention the recomputation does not know (ALiBi inside a fused
kernel, soft-capping) fails loudly instead of storing a wrong gradient.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from layerlake.core.choices import AttentionProbs
from layerlake.etl.errors import ExtractionError
from layerlake.etl.layouts import Fit

# how far A_h V_h may be from the attention output SDPA returned, relative to its largest entry
_TOLERANCE = {torch.float64: 1e-9, torch.float32: 2e-4}
_LOW_PRECISION_TOLERANCE = 5e-2  # bfloat16, float16


@dataclass
class _Layer:
    """What one layer's forward left for its backward: X, and the probabilities or their ingredients."""

    x: torch.Tensor | None = None  # (B, T, d_model), the value map's input
    sdpa: dict | None = None  # q, k, v, out, attn_mask, is_causal, scale
    probs: torch.Tensor | None = None  # (B, H, T, S)


@dataclass
class OvGradient:
    """Accumulates ``G_h`` of every layer over the micro-batches of one gradient pass (:meth:`attached`)."""

    fit: Fit
    g: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (H, d_model, d_model) float64
    _layers: dict[int, _Layer] = field(default_factory=dict)
    _current: int | None = None
    reductions: int = 0
    in_backward: bool = (
        False  # a forward now is activation checkpointing's recomputation (capture.recomputing)
    )

    @contextmanager
    def attached(self) -> Iterator[OvGradient]:
        """Hooks (and, for ``probs: sdpa``, a torch-function mode) for the duration of the block."""
        handles = []
        layout = self.fit.layout
        try:
            for block in self.fit.blocks:
                i = block.index
                handles.append(block.owner(block.value_matrix).register_forward_hook(self._keep_x(i)))
                handles.append(block.attention.register_forward_pre_hook(self._enter(i)))
                handles.append(block.attention.register_forward_hook(self._leave(i)))
                handles.append(block.owner("dense").register_forward_hook(self._on_output(i)))
                if block.probs_module is not None:
                    handles.append(block.probs_module.register_forward_hook(self._keep_probs(i)))
            with _SdpaCapture(self) if layout.probs == AttentionProbs.sdpa else nullcontext():
                yield self
        finally:
            for handle in handles:
                handle.remove()
            self._layers.clear()
            self._current = None

    def check_complete(self, micro_batches: int) -> None:
        """Every layer must have been reduced once per micro-batch."""
        want = micro_batches * len(self.fit.blocks)
        if self.reductions != want or self._layers:
            raise ExtractionError(
                f"the ov gradient reduced {self.reductions} (layer, micro-batch) pairs of {want}: W_O's output "
                f"of some layer got no gradient, or its attention ran twice",
                fix="check the layout's attention and out patterns, or set extract.gradients=false",
            )

    # -- the forward: what each layer leaves for its backward -------------------------------------------

    def _keep_x(self, layer: int):
        def hook(module, args, output) -> None:
            if not self.in_backward:
                self._layers.setdefault(layer, _Layer()).x = args[0].detach()

        return hook

    def _enter(self, layer: int):
        def hook(module, args) -> None:
            if self.in_backward:
                return
            state = self._layers.setdefault(layer, _Layer())
            state.sdpa = state.probs = None  # this forward's (a probs_module's hook fills it after this)
            self._current = layer

        return hook

    def _leave(self, layer: int):
        def hook(module, args, output) -> None:
            if self.in_backward:
                return
            self._current = None
            state = self._layers[layer]
            if state.sdpa is None and state.probs is None and isinstance(output, tuple) and len(output) > 1:
                weights = output[1]  # Hugging Face's eager attention returns its probabilities second
                if isinstance(weights, torch.Tensor) and weights.dim() == 4:
                    state.probs = weights.detach()

        return hook

    def _keep_probs(self, layer: int):
        def hook(module, args, output) -> None:
            if not self.in_backward:
                self._layers.setdefault(layer, _Layer()).probs = output.detach()

        return hook

    def keep_sdpa(self, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        """One call of ``scaled_dot_product_attention`` inside the attention module of the current layer."""
        layer = self._current
        if layer is None:
            return
        state = self._layers.setdefault(layer, _Layer())
        if state.sdpa is not None:
            raise ExtractionError(
                f"the attention module of layer {layer} ({self.fit.blocks[layer].name}) called "
                "scaled_dot_product_attention twice in one forward: which one is the head's attention is unknown",
                fix="point the layout's attention pattern at the module that attends once, or set probs: none",
            )
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
        given = dict(zip(names, args, strict=False)) | kwargs
        if given.get("dropout_p", 0.0):
            raise ExtractionError(
                f"layer {layer}'s attention ran with dropout {given['dropout_p']}: its probabilities are random",
                fix="run the snapshot in eval mode (extraction and tracking do), or set probs: none",
            )
        state.sdpa = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in given.items()}
        state.sdpa["out"] = out.detach()

    def _on_output(self, layer: int):
        def hook(module, args, output) -> None:
            out = output[0] if isinstance(output, tuple) else output
            if isinstance(out, torch.Tensor) and out.requires_grad:
                out.register_hook(lambda delta: self._reduce(layer, delta))

        return hook

    # -- the backward: one layer's G_h, at once ---------------------------------------------------------

    def _reduce(self, layer: int, delta: torch.Tensor) -> None:
        state = self._layers.pop(layer, None)
        block = self.fit.blocks[layer]
        if state is None or state.x is None or (state.sdpa is None and state.probs is None):
            raise ExtractionError(
                f"the ov gradient of layer {layer} ({block.name}) has no attention probabilities: its attention "
                f"module called no scaled_dot_product_attention and returned none (layout "
                f"{self.fit.layout.name!r}, probs: {self.fit.layout.probs})",
                fix="run the model with SDPA or eager attention (a Hugging Face model's attn_implementation: 'sdpa' or "
                "'eager'), "
                "or declare probs: module / probs: none in the layout (docs/families.md)",
            )
        x = state.x
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        x, delta = x.to(dtype), delta.detach().to(dtype)
        n_heads, d = self.fit.shape.n_heads, x.shape[-1]
        g = self.g.get(layer)
        if g is None:
            g = self.g[layer] = torch.zeros(n_heads, delta.shape[-1], d, dtype=torch.float64, device=x.device)
        for h in range(n_heads):
            a = self._probs(layer, state, h, dtype)  # (B, T, S)
            y = torch.matmul(a, x)  # (B, T, d_model): head h's attention-weighted value input
            g[h] += (delta.reshape(-1, delta.shape[-1]).T @ y.reshape(-1, d)).to(torch.float64)
        self.reductions += 1

    def _probs(self, layer: int, state: _Layer, head: int, dtype: torch.dtype) -> torch.Tensor:
        """Head ``head``'s probabilities (B, T, S) of this micro-batch, recomputed and checked if need be."""
        if state.probs is not None:
            self._check_heads(layer, state.probs.shape[1])
            return state.probs[:, head].to(dtype)
        s = state.sdpa
        q, k, v = s["query"], s["key"], s["value"]
        self._check_heads(layer, q.shape[-3])
        kv_head = head // (q.shape[-3] // k.shape[-3])  # grouped-query attention: the head's kv group
        q_h, k_h, v_h = q[:, head].to(dtype), k[:, kv_head].to(dtype), v[:, kv_head].to(dtype)
        scale = s.get("scale") or 1.0 / math.sqrt(q.shape[-1])
        scores = torch.matmul(q_h, k_h.transpose(-2, -1)) * scale  # (B, T, S)
        mask = s.get("attn_mask")
        if mask is not None:
            mask = mask[:, head if mask.shape[1] > 1 else 0] if mask.dim() == 4 else mask
            scores = (
                scores.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else scores + mask.to(dtype)
            )
        if s.get("is_causal"):
            t, src = scores.shape[-2:]
            causal = torch.ones(t, src, dtype=torch.bool, device=scores.device).tril()
            scores = scores.masked_fill(~causal, -math.inf)
        a = torch.softmax(scores, dim=-1)
        self._check_output(layer, head, a, v_h, s["out"][:, head])
        return a

    def _check_heads(self, layer: int, found: int) -> None:
        if found != self.fit.shape.n_heads:
            raise ExtractionError(
                f"layer {layer}'s attention probabilities have {found} heads; the layout reads "
                f"{self.fit.shape.n_heads}",
                fix="check the layout's n_heads",
            )

    def _check_output(
        self, layer: int, head: int, a: torch.Tensor, v: torch.Tensor, out: torch.Tensor
    ) -> None:
        """``A_h V_h`` must be the attention output the model computed (else the recomputation is wrong)."""
        if not bool(torch.isfinite(out).all()):
            raise ExtractionError(
                f"layer {layer}'s attention output holds NaN or infinite values: the forward overflowed "
                f"({out.dtype}) or the checkpoint is corrupt, and no gradient of it means anything",
                fix="extract in float32 where it ran in less (executor.dtype=float32), or leave the step out (steps.only=[...])",
            )
        tolerance = _TOLERANCE.get(out.dtype, _LOW_PRECISION_TOLERANCE)
        scale = out.abs().max().item() or 1.0
        error = (torch.matmul(a, v) - out.to(a.dtype)).abs().max().item()
        if not error <= tolerance * scale:
            raise ExtractionError(
                f"attention probabilities recomputed from q and k do not give layer {layer}'s attention output "
                f"(head {head}: off by {error:.3g}, {error / scale:.2g} of its largest entry): the attention adds "
                "something the recomputation does not know (ALiBi, soft-capping, a sink)",
                fix="declare probs: module (a module whose output is the probabilities) or probs: none in the "
                "layout; with probs: none the ov gradient is left out",
            )


class _SdpaCapture(TorchFunctionMode):
    """Passes every torch call through; records each ``scaled_dot_product_attention`` call's arguments."""

    def __init__(self, owner: OvGradient) -> None:
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is F.scaled_dot_product_attention and self.owner._current is not None:
            self.owner.keep_sdpa(args, kwargs, out)
        return out
