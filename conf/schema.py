"""Typed schemas for every Hydra config group: a wrong key or type fails when the config is composed.

``Config`` is registered as ``config_schema``, the first entry of ``conf/config.yaml``'s defaults list,
so each YAML file under ``conf/<group>/`` is merged onto its group's dataclass here (``Config.<group>``)
and validated against it. Nothing is registered inside the groups themselves, so Hydra's option lists
(``--help``) show only the YAML files and the recipes. The entrypoint turns the composed ``DictConfig`` into these frozen dataclasses
(``to_settings``); library code below the CLI only ever sees plain dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from layerlake.core.choices import (
    Architecture,
    Autocast,
    Dtype,
    Estimator,
    ExecutorKind,
    FigureFormat,
    Kernel,
    MatmulPrecision,
    PositionRule,
    ProbeSource,
    Site,
    SpectraPrecision,
    StepSchedule,
    SuiteSource,
    VSlice,
    check_device,
)
from layerlake.core.limits import MAX_STEP, MAX_THREADS, MAX_TOKENS
from layerlake.core.paths import default_data_dir

CONF_DIR = Path(__file__).resolve().parent
THREADS_CAP = (
    "a fixed cap, above any machine's cores: more threads only slow torch down, and 10^6 killed the process"
)


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("layerlake.data_dir"):
        OmegaConf.register_new_resolver("layerlake.data_dir", lambda: str(default_data_dir()))


_register_resolvers()


@dataclass
class PathsConfig:
    data: str = "${layerlake.data_dir:}"
    suites: str = "${paths.data}/suites"
    warehouse: str = "${paths.data}/warehouse"
    runs: str = "${paths.data}/runs"


@dataclass
class ConstructorConfig:
    """How to build a model that is not a Hugging Face one: ``target`` (``package.module:Callable`` or
    ``package.module.Callable``) called with ``kwargs``; its checkpoints are state dicts."""

    target: str = MISSING
    kwargs: dict[str, Any] = field(default_factory=dict)


def check_constructor(where: str, constructor: ConstructorConfig) -> None:
    """The constructor imports, is callable, and takes its kwargs: a ``ConfigError`` naming the fix if not."""
    import importlib
    import inspect

    from layerlake.core.errors import ConfigError

    target = constructor.target
    module_name, _, attr = target.partition(":") if ":" in target else target.rpartition(".")
    fix = f"set {where}.target to an importable callable, e.g. nanogpt.model:GPT or litgpt.model.GPT"
    if not module_name or not attr:
        raise ConfigError(f"{where}.target {target!r} is not an import path (module:callable)", fix=fix)
    try:
        found = importlib.import_module(module_name)
        for part in attr.split("."):
            found = getattr(found, part)
    except ImportError as error:
        raise ConfigError(
            f"{where}.target {target!r}: cannot import {module_name} ({error})", fix=fix
        ) from None
    except AttributeError:
        raise ConfigError(f"{where}.target {target!r}: {module_name} has no {attr!r}", fix=fix) from None
    if not callable(found):
        raise ConfigError(f"{where}.target {target!r} is not callable", fix=fix)
    try:
        inspect.signature(found).bind(**dict(constructor.kwargs))
    except TypeError as error:
        raise ConfigError(
            f"{where}.kwargs do not fit {target}: {error}",
            fix=f"give {where}.kwargs the keyword arguments {target} takes",
        ) from None
    except ValueError:  # no signature to check (a builtin): the call itself will say
        pass


def check_at_least(where: str, config: Any, bounds: dict[str, float]) -> None:
    """Each numeric field of ``config`` named in ``bounds`` is at least its bound (a ``ConfigError`` naming
    ``where.<field>`` if not); None (not set) and a value still missing are not checked. A negative
    tokens_per_step stored negative tokens_seen, a negative thread count failed each task later."""
    from layerlake.core.errors import ConfigError

    for name, low in bounds.items():
        value = getattr(config, name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not value >= low:
            raise ConfigError(
                f"{where}.{name} is {value}: it must be at least {low:g}",
                fix=f"set {where}.{name} to a number >= {low:g}",
            )


def check_above(where: str, config: Any, bounds: dict[str, float]) -> None:
    """Like ``check_at_least``, for a bound the value must exceed (a learning rate of 0 trains nothing)."""
    from layerlake.core.errors import ConfigError

    for name, low in bounds.items():
        value = getattr(config, name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not value > low:
            raise ConfigError(
                f"{where}.{name} is {value}: it must be more than {low:g}",
                fix=f"set {where}.{name} to a number > {low:g}",
            )


def check_not_empty(where: str, config: Any, names: dict[str, str]) -> None:
    """Each list of ``config`` named in ``names`` (field -> what it chooses) is None or holds something:
    an empty list chooses nothing, so an extraction would store no rows (and replace a stored checkpoint's
    rows with none)."""
    from layerlake.core.errors import ConfigError

    for name, what in names.items():
        value = getattr(config, name)
        if isinstance(value, list) and not value:
            raise ConfigError(
                f"{where}{name}=[] chooses no {what}: nothing would be extracted or queried",
                fix=f"list at least one {what}, or leave {where}{name} out for its default",
            )


def check_at_most(where: str, config: Any, bounds: dict[str, tuple[float, str]]) -> None:
    """Each numeric field of ``config`` named in ``bounds`` (field -> (bound, why)) is at most its bound (a
    ``ConfigError`` naming ``where.<field>``, the bound and why if not); None is not checked."""
    from layerlake.core.errors import ConfigError

    for name, (high, why) in bounds.items():
        value = getattr(config, name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not value <= high:
            raise ConfigError(
                f"{where}.{name} is {value}: it must be at most {high:,} ({why})",
                fix=f"set {where}.{name} to a number <= {high:,}",
            )


def check_steps(where: str, steps: Any) -> None:
    """A list of checkpoint steps holds no negative step, and none past ``MAX_STEP`` (the steps the
    warehouse stores, as ``layerlake.track`` checks them: a step of 2^62 overflowed its tokens_seen)."""
    from layerlake.core.errors import ConfigError

    bad = [s for s in steps or () if isinstance(s, int) and s < 0]
    if bad:
        raise ConfigError(
            f"{where} holds step {bad[0]}: a step cannot be negative", fix=f"give {where} steps >= 0"
        )
    big = [s for s in steps or () if isinstance(s, int) and s > MAX_STEP]
    if big:
        raise ConfigError(
            f"{where} holds step {big[0]}: past the largest step the warehouse stores ({MAX_STEP:,})",
            fix=f"give {where} training steps (a count from 0), not a timestamp or a token count",
        )


def check_tokens_seen(suite: Any, steps: Any) -> None:
    """The largest of ``steps`` times the suite's tokens per step fits the stored ``tokens_seen``."""
    from layerlake.core.errors import ConfigError

    tokens = suite.tokens_per_step
    top = max((s for s in steps if isinstance(s, int) and not isinstance(s, bool)), default=None)
    if isinstance(tokens, int) and top is not None and top * tokens > MAX_TOKENS:
        raise ConfigError(
            f"step {top} x suite.tokens_per_step {tokens} is {top * tokens:,} tokens seen: more than the "
            f"warehouse stores ({MAX_TOKENS:,})",
            fix="set suite.tokens_per_step to the tokens of one training step (batch size x sequence length), "
            "and the steps to training steps",
        )


def check_no_repeats(
    where: str, config: Any, names: dict[str, str], why: str = "its rows would be extracted and stored twice"
) -> None:
    """Each list of ``config`` named in ``names`` (field -> what it chooses) names each value once (a model
    spec by its name): a value listed twice stored its rows twice (``extract.sites=[attn_out,attn_out]``:
    duplicate keys that ``layerlake check`` then failed)."""
    from layerlake.core.errors import ConfigError

    for name, what in names.items():
        seen: set[Any] = set()
        for value in getattr(config, name) or ():
            key = getattr(value, "name", value) if is_dataclass(value) else str(value)
            if key in seen:
                raise ConfigError(
                    f"{where}{name} lists {what} {key!r} twice: {why}",
                    fix=f"list each {what} of {where}{name} once",
                )
            seen.add(key)


@dataclass
class ModelSpec:
    """One model of a suite. Shapes are needed to build the embedded suite; hub suites give them too."""

    name: str = MISSING
    repo: Optional[str] = None  # hub repo id (source=hf)
    n_layers: int = MISSING
    d_model: int = MISSING
    n_heads: int = MISSING
    d_mlp: Optional[int] = None  # default 4 * d_model
    n_params_label: Optional[str] = None  # e.g. "160m"
    architecture: Architecture = Architecture.gpt_neox  # what the embedded suite trains
    n_kv_heads: Optional[int] = None  # llama: key/value heads (grouped-query attention); None = n_heads
    # A model of any torch.nn.Module class (local suites): its checkpoints are state dicts (model.safetensors
    # or model.pt) of the model `constructor` builds, read through `layout` (a preset name or a YAML file)
    constructor: Optional[ConstructorConfig] = None
    layout: Optional[str] = None  # where its sites live; default: the Hugging Face family's preset

    def __post_init__(self) -> None:  # runs when the composed config becomes this dataclass
        from layerlake.core.errors import ConfigError
        from layerlake.core.layouts import load_layout

        where = f"suite.models[{self.name}]"
        check_at_least(where, self, {"n_layers": 1, "d_model": 1, "n_heads": 1, "d_mlp": 1, "n_kv_heads": 1})
        if self.constructor is not None:
            check_constructor(f"{where}.constructor", self.constructor)
            if self.layout is None:
                raise ConfigError(
                    f"{where} has a constructor but no layout: a custom model's sites cannot be found by name",
                    fix=f"set {where}.layout to a preset (nanogpt, litgpt, olmo_core, torchtitan_llama ...) "
                    "or a layout YAML file (docs/families.md)",
                )
        if self.layout is not None:
            load_layout(self.layout)  # a preset's name, or a YAML file that parses into a layout
            if Path(self.layout).suffix in (".yaml", ".yml"):  # workers elsewhere read it from the same place
                self.layout = str(Path(self.layout).expanduser().resolve())


@dataclass
class TrainConfig:
    """How the embedded suite is trained (ignored for hub suites)."""

    seq_len: int = 64
    batch_size: int = 16
    max_steps: int = 512
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 32
    weight_decay: float = 0.01
    vocab_size: int = 512
    seed: int = 1234
    torch_threads: int = 2
    # Tracking (they do not change the weights, so not the build's identity):
    variant: Optional[str] = None  # a run of the suite's model under other training settings (a seed ...):
    # trained into <model>@<variant>/ as run <suite>.<model>.<variant>; in a multirun, named after its sweep
    snapshots: bool = False  # also take the rows of each checkpoint from the live model while it trains

    def __post_init__(self) -> None:  # runs when the composed config becomes this dataclass
        check_at_least(
            "suite.train",
            self,
            {"seq_len": 1, "batch_size": 1, "max_steps": 1, "min_lr_ratio": 0, "warmup_steps": 0,
             "weight_decay": 0, "vocab_size": 1, "torch_threads": 1},
        )  # fmt: skip
        check_at_most("suite.train", self, {"torch_threads": (MAX_THREADS, THREADS_CAP)})
        check_above("suite.train", self, {"lr": 0})


@dataclass
class RevisionsConfig:
    """How a hub suite names its checkpoints, and whether to list them from the hub."""

    pattern: str = r"step(?P<step>\d+)"  # a checkpoint's revision name, in full; group `step` is its step
    discover: bool = False  # list each repo's checkpoints from its hub refs instead of `steps`
    schedule: StepSchedule = StepSchedule.all  # which of the listed checkpoints to use
    count: int = 32  # log_spaced: about how many
    every: int = 10  # every_kth: k

    def __post_init__(self) -> None:  # runs when the composed config becomes this dataclass
        check_at_least("suite.revisions", self, {"count": 1, "every": 1})


@dataclass
class SuiteConfig:
    name: str = MISSING
    source: SuiteSource = SuiteSource.local
    tokens_per_step: int = MISSING
    models: list[ModelSpec] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)  # the suite's full checkpoint schedule
    subsets: dict[str, list[int]] = field(default_factory=dict)  # named step subsets, e.g. paper
    final_step: Optional[int] = None  # the reference checkpoint; default the last of `steps`
    keep_downloads: bool = False  # hf: keep downloaded revisions (else each is deleted once committed)
    download_budget_gb: Optional[float] = None  # hf: after each commit, the oldest cached revisions of the
    # suite's repos are deleted until they take at most this many GB of the hub cache (None: no limit)
    trust_remote_code: bool = False
    revisions: RevisionsConfig = field(default_factory=RevisionsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:  # runs when the composed config becomes this dataclass
        check_at_least("suite", self, {"tokens_per_step": 1, "final_step": 0})
        check_steps("suite.steps", self.steps)
        for name, steps in self.subsets.items():
            check_steps(f"suite.subsets.{name}", steps)
        check_at_most("suite", self, {"final_step": (MAX_STEP, "the largest step the warehouse stores")})
        check_tokens_seen(
            self, [*self.steps, *(s for v in self.subsets.values() for s in v), self.final_step]
        )
        check_no_repeats("suite.", self, {"models": "model"}, why="one of the two would be silently left out")
        custom = [m.name for m in self.models if m.constructor is not None]
        if custom and self.source != SuiteSource.local:
            from layerlake.core.errors import ConfigError

            raise ConfigError(
                f"suite {self.name!r} is a {self.source} suite, but model {custom[0]!r} has a constructor: state "
                "dicts are read from local folders",
                fix="set suite.source=local and put each step's model.safetensors (or model.pt) in "
                "<suites>/<suite>/<model>/step<N>/",
            )
        if self.download_budget_gb is not None and self.download_budget_gb < 0:
            from layerlake.core.errors import ConfigError

            raise ConfigError(
                f"suite.download_budget_gb is {self.download_budget_gb}: a disk budget cannot be negative",
                fix="set it to the GB of hub cache the suite's repos may keep, or null for no limit",
            )


@dataclass
class StepsConfig:
    """Which steps of the suite to use: all of them, a named subset of the suite, or a list."""

    subset: Optional[str] = None  # name in suite.subsets; None = all
    only: Optional[list[int]] = None  # explicit steps; wins over subset

    def __post_init__(self) -> None:  # runs when the composed config becomes this dataclass
        check_not_empty("steps.", self, {"only": "step"})
        check_steps("steps.only", self.only)


@dataclass
class ProbeConfig:
    source: ProbeSource = ProbeSource.embedded
    path: Optional[str] = None  # source=file
    dataset: Optional[str] = None  # source=hub
    n_sequences: int = 32
    seq_len: int = 64
    positions: PositionRule = PositionRule.last
    n_sample: int = 64  # positions=sample: how many (sequence, position) pairs
    seed: int = 0

    def __post_init__(self) -> None:  # runs when the composed config becomes this dataclass
        check_at_least("probe", self, {"n_sequences": 1, "seq_len": 1, "n_sample": 1, "seed": 0})
        check_at_most("probe", self, {"seed": (2**63 - 1, "probes.seed is a 64-bit integer")})


@dataclass
class ExecutorConfig:
    kind: ExecutorKind = ExecutorKind.local
    num_cpus: Optional[int] = None
    num_gpus: int = 0
    address: Optional[str] = None  # join an existing Ray cluster
    max_retries: int = 2
    device: str = "auto"  # auto | cpu | cuda | cuda:N (checked when composed)
    dtype: Dtype = Dtype.float32
    torch_threads: Optional[int] = None
    prefetch: bool = True  # load the next checkpoint while one computes (two checkpoints in host memory)

    def __post_init__(self) -> None:  # runs when the composed config becomes this dataclass
        check_device(self.device)
        check_at_least("executor", self, {"num_cpus": 1, "num_gpus": 0, "max_retries": 0, "torch_threads": 1})
        check_at_most("executor", self, {"torch_threads": (MAX_THREADS, THREADS_CAP)})


@dataclass
class ExtractConfig:
    sites: list[Site] = field(default_factory=lambda: list(Site))
    per_head: bool = True
    v_slice: VSlice = VSlice.true_v
    gradients: bool = True  # spectra of the LM-loss gradients (conf/extract/default.yaml says the same)
    weight_spectra: bool = True
    kernels: list[Kernel] = field(default_factory=lambda: [Kernel.linear])
    estimators: list[Estimator] = field(default_factory=lambda: list(Estimator))
    near_zero_eps: float = 1e-3
    batch_size: Optional[int] = None  # sequences per forward chunk (bounds memory); None = all at once
    store_activations: bool = False  # keep each site's probe activations (float16) for pwcca(); costly
    spectra_precision: SpectraPrecision = SpectraPrecision.float64  # float32: faster SVDs, see docs
    matmul_precision: MatmulPrecision = MatmulPrecision.float32  # tf32: faster on Ampere+ GPUs; see docs
    autocast: Autocast = Autocast.none  # bfloat16: mixed-precision pass; its error: benchmarks/RESULTS.md

    def __post_init__(self) -> None:  # runs when the composed config becomes this dataclass
        check_not_empty("extract.", self, {"sites": "site", "kernels": "kernel", "estimators": "estimator"})
        check_no_repeats("extract.", self, {"sites": "site", "kernels": "kernel", "estimators": "estimator"})
        check_at_least("extract", self, {"near_zero_eps": 0, "batch_size": 1})


@dataclass
class RecipeConfig:
    name: str = MISSING
    params: dict[str, Any] = field(default_factory=dict)
    max_rows: Optional[int] = 20  # rows the terminal table shows (`query --max-rows N`); None: all (`--all`)

    def __post_init__(self) -> None:  # runs when the composed config becomes this dataclass
        check_at_least("recipe", self, {"max_rows": 1})


@dataclass
class PlotConfig:
    """How ``layerlake query`` saves a recipe's figure (``plot.format=pdf``, ``plot.measure=erank``)."""

    format: FigureFormat = FigureFormat.png
    ppi: int = 300  # PNG pixels per inch
    measure: Optional[str] = (
        None  # recipes that offer a choice of measure (rank_trajectories: per | erank | ...)
    )

    def __post_init__(self) -> None:  # runs when the composed config becomes this dataclass
        check_at_least("plot", self, {"ppi": 1})


@dataclass
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    suite: SuiteConfig = field(default_factory=SuiteConfig)
    steps: StepsConfig = field(default_factory=StepsConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    recipe: Optional[RecipeConfig] = None
    plot: PlotConfig = field(default_factory=PlotConfig)
    models: Optional[list[str]] = None  # restrict to these model names; None = all of the suite
    progress: bool = True

    def __post_init__(self) -> None:  # runs when the composed config becomes this dataclass
        check_not_empty("", self, {"models": "model"})
        check_no_repeats("", self, {"models": "model"})
        if isinstance(self.suite, SuiteConfig) and isinstance(self.steps, StepsConfig):
            # a hub suite's steps.only need not be in suite.steps (its revisions are listed from the hub)
            check_tokens_seen(self.suite, self.steps.only or ())


GROUPS: dict[str, type] = {
    "paths": PathsConfig,
    "suite": SuiteConfig,
    "steps": StepsConfig,
    "probe": ProbeConfig,
    "executor": ExecutorConfig,
    "extract": ExtractConfig,
    "recipe": RecipeConfig,
}


def register_schemas() -> None:
    """Register ``config_schema``: the typed root every group's YAML file is merged onto (and checked by)."""
    ConfigStore.instance().store(name="config_schema", node=Config)


def register_recipe(name: str, params: dict[str, Any]) -> None:
    """Make ``+recipe=<name>`` composable, with ``params`` as its defaults (declared in the recipe's SQL)."""
    ConfigStore.instance().store(group="recipe", name=name, node=RecipeConfig(name=name, params=dict(params)))


def to_settings(cfg: Any) -> Config:
    """The composed ``DictConfig`` as plain, fully resolved dataclasses (closed sets as ``Choice`` members);
    a key the schema does not know (added with ``+``) is a ``ConfigError`` (``check_known_keys``)."""
    resolved = OmegaConf.to_object(cfg)
    if not isinstance(resolved, Config):
        raise TypeError(f"the composed config is a {type(resolved).__name__}, not a Config")
    check_known_keys(resolved)
    return resolved


def check_known_keys(node: Any, where: str = "") -> None:
    """Every key of the settings is a field of its schema. Hydra's ``+`` adds a key the schema lacks
    (``+extract.batchsize=4``), and OmegaConf keeps it as a stray attribute that nothing reads: the option
    was silently ignored. Dict-typed keys (``recipe.params``, ``suite.subsets``, a constructor's
    ``kwargs``) take any name; Hydra's own keys (``hydra.*``) are not part of the settings."""
    from layerlake.core.choices import did_you_mean
    from layerlake.core.errors import ConfigError

    if isinstance(node, list):
        for index, item in enumerate(node):
            check_known_keys(item, f"{where}[{getattr(item, 'name', index)}]")
        return
    if not is_dataclass(node):
        return
    known = [f.name for f in fields(node)]
    for name in vars(node):
        if name not in known:
            key, parent = f"{where}.{name}" if where else name, where or "the top level"
            full = [f"{where}.{k}" if where else k for k in known]
            raise ConfigError(
                f"unknown config key {key!r}{did_you_mean(key, full)}: no option of that name exists, so "
                "nothing would read it",
                fix=f"{parent} takes: {', '.join(known)}; see every key and its current value with "
                "`layerlake <command> --cfg job`",
            )
    for name in known:
        check_known_keys(getattr(node, name), f"{where}.{name}" if where else name)
