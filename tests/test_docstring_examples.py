"""Every ``Examples::`` block in the package's docstrings runs and prints what it shows.

The docstrings promise runnable examples (Captum's convention); this runs
each module's examples with :mod:`doctest`, so an example that drifts from
the code fails here instead of in a user's session.
"""
import doctest
import importlib
import pkgutil

import pytest
import torch

import captum_global


def _modules_with_examples():
    names = []
    for info in pkgutil.walk_packages(captum_global.__path__, "captum_global."):
        if info.name.endswith("__main__"):  # importing it runs the command line
            continue
        module = importlib.import_module(info.name)
        if doctest.DocTestFinder().find(module) and any(
                test.examples for test in doctest.DocTestFinder().find(module)):
            names.append(info.name)
    return names


MODULES = _modules_with_examples()


def test_the_public_modules_have_examples():
    # guards the parametrisation below against finding nothing (a broken walk would pass vacuously)
    for name in ("captum_global.attr.sise", "captum_global.attr.rise", "captum_global.attr.input_agnostic",
                 "captum_global.attr.classwise", "captum_global.backdoor.scan", "captum_global.backdoor.cleanse",
                 "captum_global.metrics.faithfulness", "captum_global.viz", "captum_global.world.zoo"):
        assert name in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = doctest.testmod(importlib.import_module(name), report=True,
                                 optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    finally:
        torch.set_num_threads(threads)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (see the output)"
