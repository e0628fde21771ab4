"""The formulas' docstring examples run: a docstring that disagrees with the code fails here."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = (
    "layerlake.etl.probes",
    "layerlake.etl.progress",
    "layerlake.etl.sites",
    "layerlake.etl.suite.corpus",
    "layerlake.etl.suite.train",
    "layerlake.warehouse.gram",
    "layerlake.warehouse.similarity",
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0
