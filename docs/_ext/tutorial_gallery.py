"""Tutorial gallery (one card per tutorial: thumbnail, title, one line) and notebook downloads.

``tutorial-gallery`` directive, one tutorial per line, ``<document> | <one line>``::

    ```{tutorial-gallery}
    mapping | Which cell types are in each Visium spot?
    ```

The title links to the tutorial (a ``:doc:`` reference, so a wrong name fails the build); the thumbnail is a figure
of the executed notebook: after the build the chosen image output of ``jupyter_execute/<doc>.ipynb`` (myst-nb's
executed copy) is cropped to its top-left 3:2 part (the first panel of a multi-panel figure) and scaled down into
``_static/thumbnails/``. ``tutorial_thumbnails`` in ``conf.py`` picks which image of a notebook
(``{"tutorials/density": 1}``: its second figure; default: the first). A tutorial without a figure
is a build warning (an error under ``-W``).

Every page made from a notebook also offers its executed ``.ipynb`` in the book theme's download menu.
"""

from __future__ import annotations

import base64
import io
import json
import posixpath
import shutil
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive
from sphinx.addnodes import pending_xref
from sphinx.util import logging
from sphinx.util.osutil import relative_uri

logger = logging.getLogger(__name__)

THUMB_DIR = "_static/thumbnails"
THUMB_SIZE = (480, 320)  # the cards' 3:2 frame


def _card_crop(img):
    """The top-left 3:2 part of a figure: the first panel of a multi-panel figure, whole panels otherwise."""
    w, h = img.size
    ratio = THUMB_SIZE[0] / THUMB_SIZE[1]
    if w / h > ratio:
        return img.crop((0, 0, round(h * ratio), h))
    return img.crop((0, 0, w, round(w / ratio)))


def _thumb_name(docname: str) -> str:
    return docname.replace("/", "__") + ".png"


class TutorialGallery(Directive):
    """Cards linking to tutorials, each with a thumbnail of one of its figures."""

    has_content = True

    def run(self) -> list[nodes.Node]:
        env = self.state.document.settings.env
        here = env.docname
        grid = nodes.container(classes=["stmap-gallery"])
        docs = env.domaindata.setdefault("stmap_gallery", {}).setdefault(here, [])
        docs.clear()
        for line in self.content:
            if not line.strip():
                continue
            name, _, blurb = (part.strip() for part in line.partition("|"))
            target = (
                name[1:] if name.startswith("/") else posixpath.normpath(posixpath.join(posixpath.dirname(here), name))
            )
            docs.append(target)
            card = nodes.container(classes=["stmap-card"])
            src = relative_uri(here + ".html", f"{THUMB_DIR}/{_thumb_name(target)}")
            href = relative_uri(here + ".html", target + ".html")
            card += nodes.raw(
                "",
                f'<a class="stmap-card-image" href="{href}">'
                f'<img src="{src}" alt="A figure of {target}" loading="lazy"></a>',
                format="html",
            )
            title = nodes.paragraph(classes=["stmap-card-title"])
            xref = pending_xref(
                "", refdomain="std", reftype="doc", reftarget="/" + target, refexplicit=False, refdoc=here, refwarn=True
            )
            xref += nodes.inline("", target)
            title += xref
            card += title
            card += nodes.paragraph("", blurb, classes=["stmap-card-text"])
            grid += card
        return [grid]


def _purge(app, env, docname: str) -> None:
    env.domaindata.get("stmap_gallery", {}).pop(docname, None)


def _merge(app, env, docnames, other) -> None:
    env.domaindata.setdefault("stmap_gallery", {}).update(other.domaindata.get("stmap_gallery", {}))


def _image_outputs(notebook: Path) -> list[bytes]:
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    images = []
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "image/png" in data:
                png = data["image/png"]
                images.append(base64.b64decode("".join(png) if isinstance(png, list) else png))
    return images


def _html_images(page: Path) -> list[bytes]:
    """PNG outputs of a built page, in page order (when the executed notebook is not on disk yet)."""
    import re

    if not page.is_file():
        return []
    out = []
    for src in re.findall(r'<img[^>]+src="([^"]+\.png)"', page.read_text(encoding="utf-8")):
        f = (page.parent / src).resolve()
        if "_images" in f.parts and f.is_file():
            out.append(f.read_bytes())
    return out


def _write_thumbnails(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    from PIL import Image

    executed = Path(app.env.mystnb_config.output_folder)
    outdir = Path(app.outdir) / THUMB_DIR
    outdir.mkdir(parents=True, exist_ok=True)
    choice = app.config.tutorial_thumbnails
    for docname in sorted({d for docs in app.env.domaindata.get("stmap_gallery", {}).values() for d in docs}):
        notebook = executed / f"{docname}.ipynb"
        images = _image_outputs(notebook) if notebook.is_file() else []
        if not images:  # a fresh build: read the figures from the written page
            images = _html_images(Path(app.outdir) / f"{docname}.html")
        index = choice.get(docname, 0)
        if not images or index >= len(images):
            logger.warning(f"tutorial-gallery: no figure {index} in the executed notebook of {docname!r}")
            continue
        img = Image.open(io.BytesIO(images[index])).convert("RGB")
        _card_crop(img).resize(THUMB_SIZE, Image.LANCZOS).save(outdir / _thumb_name(docname), optimize=True)


def _notebook_download(app, pagename: str, templatename: str, context: dict, doctree) -> None:
    """Offer the executed notebook of a myst-nb page in the book theme's download menu."""
    if doctree is None or not hasattr(app.env, "mystnb_config"):
        return
    notebook = Path(app.env.mystnb_config.output_folder) / f"{pagename}.ipynb"
    if not notebook.is_file():
        return
    dest = Path(app.outdir) / "_sources" / f"{pagename}.ipynb"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(notebook, dest)
    context["ipynb_source"] = f"{pagename}.ipynb"


def setup(app):
    """Register the directive, the thumbnail writer and the notebook downloads."""
    app.add_config_value("tutorial_thumbnails", {}, "html")
    app.add_directive("tutorial-gallery", TutorialGallery)
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    app.connect("build-finished", _write_thumbnails, priority=900)  # after myst-nb has written its outputs
    app.connect("html-page-context", _notebook_download, priority=400)  # before the book theme builds its menu
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}
