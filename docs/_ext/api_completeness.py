"""Warn (an error under ``sphinx-build -W``) when a public function of a stmap submodule is missing from api.md."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

SUBMODULES = ("pp", "tl", "pl", "datasets", "metrics")


def _public(modname: str) -> list[str]:
    mod = importlib.import_module(modname)
    names = getattr(mod, "__all__", None)
    if names is None:
        names = [
            n
            for n, obj in vars(mod).items()
            if not n.startswith("_") and inspect.isfunction(obj) and obj.__module__ == modname
        ]
    return sorted(names)


def _check(app: Sphinx) -> None:
    api = Path(app.srcdir, "api.md")
    text = api.read_text(encoding="utf-8")
    for sub in SUBMODULES:
        modname = f"stmap.{sub}"
        # entries of the `.. autosummary::` block(s) between `.. module:: stmap.<sub>` and the next `.. module::`
        section = re.split(rf"\.\. module:: {re.escape(modname)}\s*\n", text)
        listed: set[str] = set()
        if len(section) > 1:
            body = re.split(r"\.\. module:: ", section[1])[0]
            listed = set(re.findall(rf"^\s+(?:{sub}\.)?([A-Za-z_]\w*)\s*$", body, flags=re.M))
        missing = [n for n in _public(modname) if n not in listed]
        if missing:
            logger.warning(
                "api.md: public names of %s not listed in its autosummary: %s",
                modname,
                ", ".join(missing),
                location=str(api),
            )


def setup(app: Sphinx) -> dict[str, object]:
    app.connect("builder-inited", _check)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
