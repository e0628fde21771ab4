"""Compose the project's config outside the CLI (tests, benchmarks, notebooks)::

from layerlake.conf.compose import compose
settings = compose(["suite=pythia", "steps=paper"])
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra import compose as hydra_compose
from hydra import initialize_config_dir

from layerlake.conf.schema import CONF_DIR, Config, register_schemas, to_settings


def compose(overrides: Sequence[str] = ()) -> Config:
    """The composed, validated config as plain dataclasses (a wrong key raises at once)."""
    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=list(overrides))
    return to_settings(cfg)
