"""Every example in labelkit's docstrings runs and prints what it says (they had drifted unseen)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import labelkit


def _modules_with_examples() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(labelkit.__path__, "labelkit.") if m.name != "labelkit.__main__"]  # runs the CLI
    finder = doctest.DocTestFinder()
    return [n for n in sorted(names) if any(t.examples for t in finder.find(importlib.import_module(n)))]


@pytest.mark.parametrize("name", _modules_with_examples())
def test_docstring_examples_run_as_written(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
