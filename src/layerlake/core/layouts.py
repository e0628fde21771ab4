"""Declared layouts: where a model's blocks, attention and MLP live, as data (``docs/families.md``).

A ``Layout`` names, with glob patterns, the transformer blocks among ``model.named_modules()`` and,
relative to one block, the weights of the attention and the MLP (``named_parameters()`` names) and the
attention module; it says how Q, K and V are laid out, how weights are oriented, where the head counts
are, how the model is called and where its attention probabilities come from. The site hooked for each
canonical name is the module owning the weight (``attn_out``: W_O's module; ``mlp_out``: the MLP output
map's; ``resid_post``: the block). Nothing here imports torch: a layout is checked against a model by
``layerlake.etl.layouts.fit``, and against its own fields here, so a config is validated when composed.

Glob patterns: ``*`` matches one dotted name part (or part of one), ``**`` any number of parts, ``?`` one
character; a pattern must match one name exactly (``transformer.h.*`` matches ``transformer.h.0``, not
``transformer.h.0.attn``).

A layout is a frozen dataclass, or YAML with the same keys (``load_layout``); presets by name in
``PRESETS``: the three Hugging Face families (found by ``config.model_type``) and ``nanogpt``, ``litgpt``,
``litgpt_neox``, ``olmo_core`` and ``torchtitan_llama``.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from layerlake.core.choices import AttentionProbs, Matrix, ModelCall, Orientation, QkvLayout
from layerlake.core.errors import ConfigError

DOC = "docs/families.md"
MLP_IN = (Matrix.dense_h_to_4h, Matrix.gate_proj, Matrix.up_proj)  # what an MLP input map may be called


@dataclass(frozen=True)
class Layout:
    """Where the canonical sites and matrices live in one model class (patterns: see the module doc)."""

    name: str
    blocks: str  # the blocks among model.named_modules(), ordered by their last number
    attention: str  # the attention module inside a block (its SDPA call gives the probabilities)
    qkv: QkvLayout  # separate | interleaved | stacked
    value: str  # weight holding V: v_proj's, or the fused QKV's
    out: str  # W_O's weight (its module's output is the attn_out site)
    mlp_in: tuple[tuple[str, str], ...]  # (canonical matrix, weight): dense_h_to_4h, or gate_proj + up_proj
    mlp_out: str  # the MLP output map's weight (its module's output is the mlp_out site)
    n_heads: int | str  # query heads: a number, or an attribute path read on the model
    n_kv_heads: int | str | None = None  # key/value heads (grouped-query attention); None = n_heads
    query: str | None = None  # separate q/k/v only
    key: str | None = None
    orientation: Orientation = Orientation.linear
    probs: AttentionProbs = AttentionProbs.sdpa
    probs_module: str | None = None  # probs=module: the module (in a block) whose output is the probabilities
    call: ModelCall = ModelCall.tokens
    model_types: tuple[str, ...] = ()  # Hugging Face config.model_type values laid out this way
    note: str = ""  # what a reader of this layout's rows should know

    def __post_init__(self) -> None:
        for name, kind in (
            ("qkv", QkvLayout),
            ("orientation", Orientation),
            ("probs", AttentionProbs),
            ("call", ModelCall),
        ):
            object.__setattr__(self, name, kind.parse(getattr(self, name), f"layout {self.name!r}: {name}"))
        object.__setattr__(self, "mlp_in", tuple((str(m), str(w)) for m, w in dict(self.mlp_in).items()))
        object.__setattr__(self, "model_types", tuple(self.model_types))
        self._check()

    def _check(self) -> None:
        where = f"layout {self.name!r}"
        fix = f"correct the layout ({DOC} says how to write one)"
        separate = self.qkv == QkvLayout.separate
        if separate and not (self.query and self.key):
            raise ConfigError(f"{where}: qkv=separate needs query and key weights besides value", fix=fix)
        if not separate and (self.query or self.key):
            raise ConfigError(
                f"{where}: qkv={self.qkv} fuses Q, K and V in `value`; query and key must be left out",
                fix=fix,
            )
        for matrix, _ in self.mlp_in:
            if matrix not in MLP_IN:
                raise ConfigError(
                    f"{where}: mlp_in names {matrix!r}; an MLP input map is one of {', '.join(MLP_IN)}",
                    fix=fix,
                )
        names = {m for m, _ in self.mlp_in}
        if names not in ({Matrix.dense_h_to_4h}, {Matrix.gate_proj, Matrix.up_proj}):
            raise ConfigError(
                f"{where}: mlp_in is {sorted(names)}; it is dense_h_to_4h alone, or gate_proj and up_proj "
                "(a gated MLP)",
                fix=fix,
            )
        if (self.probs == AttentionProbs.module) != bool(self.probs_module):
            raise ConfigError(f"{where}: probs_module is given exactly when probs=module", fix=fix)
        for name in ("n_heads", "n_kv_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or (isinstance(value, int) and value < 1):
                raise ConfigError(f"{where}: {name}={value!r} is not a head count", fix=fix)
        for name, pattern in self.patterns().items():
            if not isinstance(pattern, str) or not pattern.strip():
                raise ConfigError(f"{where}: pattern {name} is empty", fix=fix)

    @property
    def fused_qkv(self) -> bool:
        return self.qkv != QkvLayout.separate

    @property
    def conv1d(self) -> bool:
        return self.orientation == Orientation.conv1d

    def weights(self) -> dict[str, str]:
        """Canonical matrix -> weight pattern in a block: the parameters whose spectra are stored
        (``query_key_value`` for a fused QKV; ``query``/``key``/``value`` of separate maps)."""
        attention = {"query": self.query, "key": self.key, "value": self.value}
        if self.fused_qkv:
            attention = {"query_key_value": self.value}
        return {**attention, "dense": self.out, **dict(self.mlp_in), "dense_4h_to_h": self.mlp_out}

    def patterns(self) -> dict[str, str]:
        """Every pattern of the layout by the field that holds it (for messages)."""
        found = {"blocks": self.blocks, "attention": self.attention, "value": self.value, "out": self.out}
        found |= {f"mlp_in.{m}": w for m, w in self.mlp_in} | {"mlp_out": self.mlp_out}
        for name in ("query", "key", "probs_module"):
            if getattr(self, name):
                found[name] = getattr(self, name)
        return found

    def to_dict(self) -> dict[str, Any]:
        """Plain values (YAML-ready): ``load_layout`` of it gives this layout back."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "mlp_in":
                value = dict(value)
            elif f.name == "model_types":
                value = list(value)
            elif hasattr(value, "value"):
                value = value.value
            if value not in (None, "", []) or f.name in ("n_heads",):
                out[f.name] = value
        return out


# --- glob patterns over dotted names ------------------------------------------------------------------


def glob_regex(pattern: str) -> re.Pattern:
    """A dotted-name glob as a regex: ``*`` within one part, ``**`` across parts, ``?`` one character.

    >>> bool(glob_regex("transformer.h.*").fullmatch("transformer.h.10"))
    True
    >>> bool(glob_regex("transformer.h.*").fullmatch("transformer.h.1.attn"))
    False
    >>> bool(glob_regex("**.c_proj.weight").fullmatch("attn.c_proj.weight"))
    True
    """
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**.", i):
            out.append(r"(?:[^.]+\.)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(r".*")
            i += 2
        elif pattern[i] == "*":
            out.append(r"[^.]*")
            i += 1
        elif pattern[i] == "?":
            out.append(r"[^.]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def matching(pattern: str, names: list[str]) -> list[str]:
    """The names a glob pattern matches, in their order."""
    regex = glob_regex(pattern)
    return [n for n in names if regex.fullmatch(n)]


# --- the presets --------------------------------------------------------------------------------------

_HF_HEADS = {"n_heads": "config.num_attention_heads", "call": ModelCall.hf}

PRESETS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout(
            name="gpt_neox",
            model_types=("gpt_neox",),
            blocks="gpt_neox.layers.*",
            attention="attention",
            qkv=QkvLayout.interleaved,
            value="attention.query_key_value.weight",
            out="attention.dense.weight",
            mlp_in=(("dense_h_to_4h", "mlp.dense_h_to_4h.weight"),),
            mlp_out="mlp.dense_4h_to_h.weight",
            note="Pythia and PolyPythias",
            **_HF_HEADS,
        ),
        Layout(
            name="llama",
            # the same module names and the same roles in each: grouped-query attention where
            # num_key_value_heads < num_attention_heads; Qwen2's q/k/v biases are in the V output; OLMo 2's
            # QK-norm acts on Q and K only, so V, W_O and the sites are llama's
            model_types=("llama", "mistral", "qwen2", "olmo", "olmo2"),
            blocks="model.layers.*",
            attention="self_attn",
            qkv=QkvLayout.separate,
            query="self_attn.q_proj.weight",
            key="self_attn.k_proj.weight",
            value="self_attn.v_proj.weight",
            out="self_attn.o_proj.weight",
            mlp_in=(("gate_proj", "mlp.gate_proj.weight"), ("up_proj", "mlp.up_proj.weight")),
            mlp_out="mlp.down_proj.weight",
            n_kv_heads="config.num_key_value_heads",
            note="LLaMA, Mistral, Qwen2, OLMo, OLMo 2, pico-lm",
            **_HF_HEADS,
        ),
        Layout(
            name="gpt2",
            model_types=("gpt2",),
            blocks="transformer.h.*",
            attention="attn",
            qkv=QkvLayout.stacked,
            value="attn.c_attn.weight",
            out="attn.c_proj.weight",
            mlp_in=(("dense_h_to_4h", "mlp.c_fc.weight"),),
            mlp_out="mlp.c_proj.weight",
            orientation=Orientation.conv1d,
            note="GPT-2 and Stanford CRFM's GPT-2 runs; Conv1D weights (in, out) are read transposed",
            **_HF_HEADS,
        ),
        Layout(
            name="nanogpt",
            blocks="transformer.h.*",
            attention="attn",
            qkv=QkvLayout.stacked,
            value="attn.c_attn.weight",
            out="attn.c_proj.weight",
            mlp_in=(("dense_h_to_4h", "mlp.c_fc.weight"),),
            mlp_out="mlp.c_proj.weight",
            n_heads="config.n_head",
            call=ModelCall.tokens_targets,
            note="karpathy/nanoGPT's GPT (and models written after it): c_attn is a Linear, [Q | K | V]",
        ),
        Layout(
            name="litgpt",
            blocks="transformer.h.*",
            attention="attn",
            qkv=QkvLayout.stacked,
            value="attn.qkv.weight",
            out="attn.proj.weight",
            mlp_in=(("gate_proj", "mlp.fc_1.weight"), ("up_proj", "mlp.fc_2.weight")),
            mlp_out="mlp.proj.weight",
            n_heads="config.n_head",
            n_kv_heads="config.n_query_groups",
            note="litgpt's GPT with the LLaMA MLP (fc_1 gate, fc_2 up, proj); qkv [Q | K | V], n_query_groups",
        ),
        Layout(
            name="litgpt_neox",
            blocks="transformer.h.*",
            attention="attn",
            qkv=QkvLayout.stacked,
            value="attn.qkv.weight",
            out="attn.proj.weight",
            mlp_in=(("dense_h_to_4h", "mlp.fc.weight"),),
            mlp_out="mlp.proj.weight",
            n_heads="config.n_head",
            n_kv_heads="config.n_query_groups",
            note="litgpt's GPT with the GPT-NeoX MLP (fc, proj), e.g. its Pythia configs",
        ),
        Layout(
            name="olmo_core",
            blocks="blocks.*",
            attention="attention",
            qkv=QkvLayout.separate,
            query="attention.w_q.weight",
            key="attention.w_k.weight",
            value="attention.w_v.weight",
            out="attention.w_out.weight",
            mlp_in=(("gate_proj", "feed_forward.w1.weight"), ("up_proj", "feed_forward.w3.weight")),
            mlp_out="feed_forward.w2.weight",
            n_heads="blocks.0.attention.n_heads",
            n_kv_heads="blocks.0.attention.n_kv_heads",
            note="OLMo-core's Transformer (blocks keyed '0', '1', ...; SwiGLU w2(silu(w1 x) * w3 x))",
        ),
        Layout(
            name="torchtitan_llama",
            blocks="layers.*",
            attention="attention",
            qkv=QkvLayout.separate,
            # torchtitan 0.3 holds q, k, v in attention.qkv_linear; earlier releases in attention itself
            query="attention.**.wq.weight",
            key="attention.**.wk.weight",
            value="attention.**.wv.weight",
            out="attention.wo.weight",
            mlp_in=(("gate_proj", "feed_forward.w1.weight"), ("up_proj", "feed_forward.w3.weight")),
            mlp_out="feed_forward.w2.weight",
            n_heads="layers.0.attention.n_heads",
            n_kv_heads="layers.0.attention.n_kv_heads",
            note="torchtitan's LLaMA 3 Transformer (layers keyed '0', '1', ...; SwiGLU w2(silu(w1 x) * w3 x))",
        ),
    )
}
MODEL_TYPES: dict[str, Layout] = {t: layout for layout in PRESETS.values() for t in layout.model_types}


def known_families() -> str:
    return "; ".join(f"{x.name} ({', '.join(x.model_types)})" for x in PRESETS.values() if x.model_types)


def layout_of_type(model_type: str | None, where: str = "") -> Layout:
    """The preset laying out a Hugging Face ``model_type``; an unknown one names the known families."""
    if model_type not in MODEL_TYPES:
        raise ConfigError(
            f"{where}model type {model_type!r} has no site layout; layerlake knows: {known_families()}",
            fix=f"pass a layout (a preset name or a YAML file, {DOC}), or extract a model of a known family",
        )
    return MODEL_TYPES[model_type]


# --- from YAML or a name ------------------------------------------------------------------------------

_FIELDS = {f.name for f in fields(Layout)}


def layout_from_dict(values: dict[str, Any], where: str) -> Layout:
    """A layout from plain values (a parsed YAML file); unknown or missing keys are named."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where} is not a mapping of layout keys", fix=f"see {DOC} for a layout's keys")
    unknown = sorted(set(values) - _FIELDS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown layout key(s) {', '.join(unknown)}; the keys are: {', '.join(sorted(_FIELDS))}",
            fix=f"correct the key names ({DOC})",
        )
    required = {f.name for f in fields(Layout) if f.default is MISSING and f.default_factory is MISSING}
    missing = sorted(k for k in required if k not in values)
    if missing:
        raise ConfigError(f"{where}: missing layout key(s) {', '.join(missing)}", fix=f"add them ({DOC})")
    values = dict(values)
    if isinstance(values.get("mlp_in"), dict):
        values["mlp_in"] = tuple(values["mlp_in"].items())
    try:
        return Layout(**values)
    except TypeError as error:
        raise ConfigError(f"{where}: {error}", fix=f"correct the layout ({DOC})") from None


def load_layout(spec: Layout | str | Path) -> Layout:
    """A layout given as itself, a preset name, or a YAML file (``*.yaml`` / ``*.yml``)."""
    if isinstance(spec, Layout):
        return spec
    text = str(spec)
    if text in PRESETS:
        return PRESETS[text]
    path = Path(text).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"layout file {path} does not exist", fix="give the path of a layout YAML file")
        import yaml

        try:
            values = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise ConfigError(f"layout file {path} is not YAML: {error}", fix=f"see {DOC}") from None
        return layout_from_dict(values, f"layout file {path}")
    raise ConfigError(
        f"layout {text!r} is neither a preset nor a YAML file; presets: {', '.join(PRESETS)}",
        fix=f"name a preset, or write the layout as YAML ({DOC})",
    )
