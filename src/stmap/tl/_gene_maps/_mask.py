"""The tissue mask of gene maps: a labels element of the H&E (``st.pp.detect_tissue``) or one computed on the fly."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from stmap._core import StmapInputError, unknown_key

if TYPE_CHECKING:
    from ._prepare import Section

#: A stored mask larger than this (pixels) is read with a stride.
_MAX_MASK_PX = 4_000_000


def check_mask(sdata: Any, tissue_mask: bool | str) -> None:
    """Refuse a named mask that is not a labels element (before anything is computed)."""
    if isinstance(tissue_mask, str) and tissue_mask not in getattr(sdata, "labels", {}):
        raise unknown_key("Labels element", tissue_mask, list(getattr(sdata, "labels", {})), "sdata.labels")


def section_mask(sec: Section, tissue_mask: bool | str) -> tuple[np.ndarray, np.ndarray] | None:
    """The tissue labels and the map from working pixels to their pixels, or ``None`` (``tissue_mask=False``).

    ``True``: the image's ``'<image>_tissue'`` element if present, else the mask :func:`stmap.pp.detect_tissue`
    would compute (with its defaults; not written). A string: that labels element.
    """
    from stmap._core._affine import affine_of, element_coordinate_systems
    from stmap._core._resolve import _image_levels
    from stmap.pp._tissue import _coarse, _levels, mask_from_score, tissue_score
    from stmap.pp._tissue import tissue_mask as stored_mask

    if tissue_mask is False:
        return None
    sdata, cs = sec.ctx.sdata, sec.img.coordinate_system
    assert sdata is not None  # gene maps need a SpatialData (resolve_section)
    name = stored_mask(sdata, sec.img.name) if tissue_mask is True else str(tissue_mask)
    if name is not None:
        el = sdata.labels[name]
        if cs not in element_coordinate_systems(el):
            raise StmapInputError(f"Tissue mask {name!r} has no transformation to coordinate system {cs!r}.")
        lv = _image_levels(el)[-1]  # the coarsest level; a full-size mask (squidpy's) read with a stride
        stride = max(1, int(np.ceil(np.sqrt(lv.shape[-2] * lv.shape[-1] / _MAX_MASK_PX))))
        lab = np.asarray(lv.data[::stride, ::stride])
        to_cs = affine_of(lv, cs) @ np.diag([stride, stride, 1.0])
    else:
        _, levels = _levels(sdata, sec.img.name)
        rgb, level, k = _coarse(levels, 1_000_000)
        lab = mask_from_score(tissue_score(rgb), min_area=0.001, max_hole=0.01, sigma=1.0)
        to_cs = sec.img.transforms[level] @ np.diag([k, k, 1.0])
    return lab > 0, np.linalg.inv(to_cs) @ sec.T


def masked(genes: Any, mask: tuple[np.ndarray, np.ndarray] | None) -> Any:
    """The lazy maps with NaN on the working pixels off the tissue (each chunk reads the small mask)."""
    import dask.array as da

    from stmap.pp._tissue import tissue_window

    if mask is None:
        return genes
    lab, to_lab = mask

    def block(x: np.ndarray, block_info: Any = None) -> np.ndarray:
        (ys, ye), (xs, xe) = block_info[0]["array-location"][1:]
        keep = tissue_window(lab, to_lab, ys, xs, ye - ys, xe - xs)
        return np.where(keep[None], x, np.asarray(np.nan, dtype=x.dtype))

    return da.map_blocks(block, genes, dtype=genes.dtype, meta=np.empty((0, 0, 0), genes.dtype))
