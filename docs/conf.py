"""Sphinx configuration of the stmap documentation (cookiecutter-scverse style)."""

from __future__ import annotations

import os
import sys

# The notebooks' kernels inherit this environment: a non-interactive MPLBACKEND (CI exports Agg for the tests) would
# stop ipykernel from choosing its inline backend, and the executed tutorials would have no figures.
os.environ.pop("MPLBACKEND", None)
from datetime import datetime
from importlib.metadata import metadata
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "_ext"))

# -- Project information -----------------------------------------------------------------------------------------------

info = metadata("stmap")
project = info["Name"]
author = info.get("Author") or "stmap developers"
copyright = f"{datetime.now():%Y}, {author}"
version = info["Version"]
release = version
repository_url = "https://github.com/stmap-dev/stmap"

# Set by `make docs`: no network, so intersphinx inventories cannot be fetched (see `nitpick_ignore_regex` below).
OFFLINE = bool(os.environ.get("STMAP_DOCS_OFFLINE"))

# -- General configuration ---------------------------------------------------------------------------------------------

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx_autodoc_typehints",  # after napoleon
    "sphinx_copybutton",
    "sphinxcontrib.bibtex",
    # docs/_ext
    "api_completeness",  # every name in a submodule's __all__ must be listed in api.md
    "typed_returns",  # prose `Returns` sections (scanpy / cookiecutter-scverse)
    "tutorial_gallery",  # tutorials index with thumbnails of their figures; executed notebooks downloadable
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "jupyter_execute"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"
default_role = "literal"
pygments_style = "default"

# autodoc / autosummary / napoleon (numpydoc-style docstrings)
autosummary_generate = True
autodoc_member_order = "groupwise"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "inherited-members": False}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_include_init_with_doc = False
napoleon_use_rtype = True  # having a separate entry generally helps readability
napoleon_use_param = True
napoleon_custom_sections = [("Params", "Parameters")]
typehints_defaults = "braces"
always_document_param_types = True
typehints_use_signature_return = False

# references: docstrings cite with :cite:`key`, entries live in docs/references.bib
bibtex_bibfiles = ["references.bib"]
bibtex_reference_style = "author_year"
bibtex_default_style = "plain"

# MyST / myst-nb: tutorials are jupytext markdown notebooks executed during the build
myst_enable_extensions = ["amsmath", "colon_fence", "deflist", "dollarmath", "html_image", "html_admonition"]
myst_heading_anchors = 3
myst_url_schemes = ("http", "https", "mailto")
nb_execution_mode = os.environ.get("STMAP_NB_EXECUTION_MODE", "cache")
nb_execution_timeout = 900
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_cache_path = str(HERE / "_build" / ".jupyter_cache")
nb_merge_streams = True
nb_output_stderr = "remove"  # library log lines and warnings printed by cells are not part of the tutorial
nb_custom_formats = {}  # plain myst-nb text notebooks (.md with a kernelspec) need no jupytext

# intersphinx: resolve cross-references to the scverse stack and friends
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable/", None),
    "scipy": ("https://docs.scipy.org/doc/scipy/", None),
    "pandas": ("https://pandas.pydata.org/pandas-docs/stable/", None),
    "matplotlib": ("https://matplotlib.org/stable/", None),
    "xarray": ("https://docs.xarray.dev/en/stable/", None),
    "dask": ("https://docs.dask.org/en/stable/", None),
    "geopandas": ("https://geopandas.org/en/stable/", None),
    "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
    "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
    "squidpy": ("https://squidpy.readthedocs.io/en/stable/", None),
    "spatialdata": ("https://spatialdata.scverse.org/en/stable/", None),
    "spatialdata_plot": ("https://spatialdata.scverse.org/projects/plot/en/stable/", None),
    "torch": ("https://docs.pytorch.org/docs/stable/", None),
}
if OFFLINE:
    intersphinx_mapping = {}

# -- Cross-reference checking ------------------------------------------------------------------------------------------

nitpicky = True
# Third-party targets whose documentation has no (or a broken) inventory entry even online.
nitpick_ignore = [
    ("py:class", "geopandas.GeoDataFrame"),  # geopandas documents it under geopandas.GeoDataFrame in a page w/o inv
    ("py:class", "xarray.DataTree"),  # re-exported from xarray.core.datatree; inventory has the private path
    ("py:class", "spatialdata.models.ShapesModel"),  # spatialdata documents models in a page not in its inventory
    ("py:class", "numpy.typing.ArrayLike"),  # documented as py:data in numpy's inventory
    ("py:class", "matplotlib.colors.Colormap"),  # referenced from type hints as a module path matplotlib omits
    ("py:class", "matplotlib.axes._axes.Axes"),  # typehints resolve Axes to its private module
    ("py:class", "pandas.core.frame.DataFrame"),
    ("py:class", "anndata._core.anndata.AnnData"),
    ("py:class", "spatialdata._core.spatialdata.SpatialData"),
    ("py:class", "stmap.pp._extractors.TorchExtractor"),  # returned by the extractor factories; a callable
]
nitpick_ignore_regex: list[tuple[str, str]] = []
if OFFLINE:
    # Without inventories no external reference can resolve. Ignore only external packages (stdlib included), so
    # that references to stmap's own API are still checked; online builds (Read the Docs) check them all.
    _external = [
        "anndata", "spatialdata", "spatialdata_plot", "scanpy", "squidpy", "torch", "numpy", "np", "xarray",
        "pandas", "pd", "scipy", "matplotlib", "dask", "geopandas", "collections", "typing", "pathlib", "os",
        "datetime", "numbers", "enum", "pooch", "tqdm", "numba", "sklearn", "skimage", "zarr",
    ]  # fmt: skip
    _pattern = r"(" + "|".join(_external) + r")(\..*)?"
    nitpick_ignore_regex = [(r"py:.*", _pattern)]
    # builtins (str, int, float, bool, None, ...) are not external modules but also live in python's inventory
    nitpick_ignore_regex.append((r"py:.*", r"(str|int|float|bool|bytes|dict|list|tuple|set|object|type|None|"
                                 r"Ellipsis|callable|slice|range|frozenset|complex|Exception|ValueError|KeyError|"
                                 r"TypeError|NotImplementedError)"))  # fmt: skip

# -- HTML output -------------------------------------------------------------------------------------------------------

html_theme = "sphinx_book_theme"
html_title = project
html_static_path = ["_static"]
html_show_sphinx = False
html_css_files = ["gallery.css"]
html_theme_options = {
    "repository_url": repository_url,
    "repository_branch": "main",
    "use_repository_button": True,
    "use_download_button": True,  # the source and, for tutorials, the executed notebook (docs/_ext/tutorial_gallery.py)
    "path_to_docs": "docs/",
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
# Which figure of each executed tutorial becomes its thumbnail in tutorials/index (0: the first; default 0).
tutorial_thumbnails: dict[str, int] = {}
html_context = {"default_mode": "light"}
