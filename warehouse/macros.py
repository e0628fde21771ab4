"""Install layerlake's SQL macros (CKA, effective rank, norms ...) on a DuckDB connection.

The macros and their formulas live in ``macros.sql`` beside this file; this module only runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MACROS_SQL = Path(__file__).with_name("macros.sql")

# The public macros (helpers named ``_ll_*`` are internal); a test checks each one is defined.
MACROS = (
    "cka",
    "cka_normed",
    "erank",
    "per",
    "stable_rank",
    "condition_number",
    "spectral_norm",
    "nuclear_norm",
    "frobenius_norm",
    "powerlaw_alpha",
)


def install(con: Any) -> Any:
    """Define every macro of ``macros.sql`` on the DuckDB connection ``con``; returns ``con``."""
    con.execute(MACROS_SQL.read_text())
    return con
