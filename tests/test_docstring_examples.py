"""The Examples of every public function and class run, so that they cannot rot.

One case per public name of ``st.pp``, ``st.tl``, ``st.io``, ``st.datasets``, ``st.metrics``, ``st.kernels`` and
``st.models`` (their ``__all__``): the examples of its docstring (and, for a class, of its methods) are collected with
:class:`doctest.DocTestFinder` and run with ``ELLIPSIS`` and ``NORMALIZE_WHITESPACE`` in a fresh namespace, from an
empty temporary working directory (examples that write files write them there). A name without Examples fails,
unless it is listed in ``NO_EXAMPLES_YET``; a listed name that has gained Examples fails too, so the list only
shrinks.
"""

from __future__ import annotations

import doctest
import importlib

import pytest
from _helpers import shared_data_dir

import stmap as st

MODULES = ("pp", "tl", "io", "datasets", "metrics", "kernels", "models")
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

# Readers of the public data sets: their examples read st.settings.datasetdir, set here to ../shared/data (skipped
# when it is absent, as the other real-data tests).
NEEDS_DATA = {
    "datasets.bdtnp_atlas",
    "datasets.cosmx_lung",
    "datasets.her2st",
    "datasets.her2st_deconvolution",
    "datasets.spacexr",
    "datasets.squidpy_visium",
    "datasets.starmap_cells",
    "datasets.visium_dentate_gyrus",
    "datasets.vizgen_brain",
}
# Optional packages an example needs (skipped without them, as the extractors themselves say how to install them).
NEEDS_MODULE = {"pp.timm_extractor": "timm", "pp.torchvision_extractor": "torchvision"}
# Public names whose docstrings have no Examples yet (their modules were being rewritten when the examples were
# written). Remove a name once it has Examples; the test says so.
NO_EXAMPLES_YET = {
    "tl.map_cells",
    "tl.project_genes",
    "kernels.largest_remainder",
    "models.PoissonDeconvolution",
    "models.fit_poisson_deconvolution",
    "models.split_counts",
}
# Examples that train a network or write a store take a few seconds; none is slow enough to leave the default run.
SLOW: set[str] = set()


def _names() -> list[str]:
    return [f"{m}.{name}" for m in MODULES for name in importlib.import_module(f"stmap.{m}").__all__]


def _doctests(qualname: str) -> list[doctest.DocTest]:
    module, name = qualname.split(".")
    obj = getattr(importlib.import_module(f"stmap.{module}"), name)
    # module=False: also the methods of a class (defined in private modules) are searched
    tests = doctest.DocTestFinder().find(obj, qualname, module=False, globs={})
    return [t for t in tests if t.examples]


@pytest.mark.parametrize(
    "qualname", [pytest.param(q, id=q, marks=[pytest.mark.slow] if q in SLOW else []) for q in _names()]
)
def test_examples_run(qualname: str, tmp_path, monkeypatch) -> None:
    tests = _doctests(qualname)
    if qualname in NO_EXAMPLES_YET:
        assert not tests, f"{qualname} has Examples now: remove it from NO_EXAMPLES_YET"
        pytest.skip(f"{qualname}: no Examples yet")
    assert tests, f"{qualname} has no Examples section"
    if qualname in NEEDS_MODULE:
        pytest.importorskip(NEEDS_MODULE[qualname])
    if qualname in NEEDS_DATA:
        monkeypatch.setattr(st.settings, "datasetdir", shared_data_dir())
    monkeypatch.chdir(tmp_path)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report: list[str] = []
    for test in tests:
        runner.run(test, out=report.append)
    assert runner.failures == 0, f"{runner.failures} of {runner.tries} examples of {qualname} failed:\n" + "".join(
        report
    )
