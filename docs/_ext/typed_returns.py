"""Numpydoc ``Returns`` sections as prose (as in scanpy and the cookiecutter-scverse template).

Napoleon reads the first line of an unnamed ``Returns`` entry as a *type* and cross-references it, which breaks on
our prose returns ("The matrix.", "The AUC; NaN when ..."). Here the section becomes ``:returns:`` text; lines of
the form ``name : type`` become bullet items with a linked type. The return type itself comes from the annotation
(sphinx-autodoc-typehints).
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterable

from sphinx.application import Sphinx
from sphinx.ext.napoleon import NumpyDocstring


def _process_return(lines: Iterable[str]) -> Generator[str, None, None]:
    for line in lines:
        if m := re.fullmatch(r"(?P<param>\w+)\s+:\s+(?P<type>[\w.]+)", line):
            yield f"-{m['param']} (:class:`~{m['type']}`)"
        else:
            yield line


def _parse_returns_section(self: NumpyDocstring, section: str) -> list[str]:
    lines_raw = self._dedent(self._consume_to_next_section())
    if lines_raw and lines_raw[0] == ":":
        del lines_raw[0]
    lines = self._format_block(":returns: ", list(_process_return(lines_raw)))
    if lines and lines[-1]:
        lines.append("")
    return lines


def setup(app: Sphinx) -> dict[str, object]:
    NumpyDocstring._parse_returns_section = _parse_returns_section
    return {"parallel_read_safe": True, "parallel_write_safe": True}
