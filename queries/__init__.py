"""SQL recipes over the warehouse: the convergence and rank findings as read-only, parameterised queries.

Each recipe is one ``.sql`` file in this folder (header: name, description, ``$parameters``, grain,
plot); ``run_recipe`` binds validated parameters and returns an Arrow table, ``queries.plots.plot``
draws it, ``queries.command`` is the ``layerlake query / recipes / import-metrics`` CLI. This package
never imports torch, transformers or ray. See ``queries/README.md`` for every finding.
"""

from __future__ import annotations

from layerlake.queries.loader import Recipe, bind_params, list_recipes, load_recipe, recipe_names, run_recipe

__all__ = ["Recipe", "bind_params", "list_recipes", "load_recipe", "recipe_names", "run_recipe"]
