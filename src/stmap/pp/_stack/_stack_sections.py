"""``st.pp.stack_sections``: gather the sections -> order by z -> align -> write one SpatialData with one table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..._core import _logging as logg
from ..._core import inject_docs
from ..._core._constants import Key
from ..._core._params import Instance, Interval, Options, validate_params
from ._align import DEFAULT_KIND, Alignment, alignments, check_aligned, key_transforms, overlap_fractions
from ._gather import gather, gene_union, median_spacing, order_by_z
from ._write import ALIGNED, ALIGNED_3D, annotate, new_stack, stack_elements, stack_table

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from ._sections import Section


def _stack_uns(
    secs: list[Section], zs: np.ndarray, al: Alignment, kind: str | None, spacing: float, fracs: list[float], info: Any
) -> dict[str, Any]:
    """``uns['stmap_stack']`` without ``params``."""
    return {
        "sections": [s.name for s in secs],
        "z": zs.tolist(),
        "transforms": [np.asarray(m, dtype=float).tolist() for m in al.mats],
        "method": al.method,
        "kind": kind or DEFAULT_KIND.get(al.method, "none"),
        "reference": al.reference,
        "rmse_um": [float(al.rmse.get(s.name, 0.0)) for s in secs],
        Key.obs.spot_radius_um: float(np.median(np.concatenate([s.radius_um for s in secs]))),
        "spot_spacing_um": spacing,
        "overlap_fraction": fracs,
        "section_info": info,
    }


@validate_params(
    sections=[Instance((list, tuple)), None],
    section_key=Instance((str,)),
    table_keys=[Instance((str, list, tuple, Mapping)), None],
    z=[Interval(float, 0, None, "neither"), Instance((list, tuple, np.ndarray, Mapping)), None],
    transforms=[Options({"warped", "icp", "landmarks"}), Instance((list, tuple, np.ndarray, Mapping)), None],
    warped_key=Instance((str,)),
    reference=[Instance((str,)), None],
    kind=[Options({"translation", "rigid", "similarity", "affine"}), None],
    landmarks=[Instance((str, Mapping)), None],
    icp_kwargs=[Instance((dict,)), None],
    coordinate_system=[Instance((str,)), None],
    spot_diameter=[Interval(float, 0, None, "neither"), None],
    genes=Options({"intersection", "union"}),
    min_overlap=Interval(float, 0, 1),
    key_added=Instance((str,)),
)
@inject_docs()
def stack_sections(
    sdatas: Sequence[SpatialData] | Mapping[str, SpatialData] | SpatialData,
    *,
    sections: Sequence[str] | None = None,
    section_key: str = Key.obs.section,
    table_keys: str | Sequence[str | None] | Mapping[str, str] | None = None,
    z: Sequence[float] | Mapping[str, float] | float | None = None,
    transforms: Literal["warped", "icp", "landmarks"] | Sequence[np.ndarray] | Mapping[str, np.ndarray] | None = None,
    warped_key: str = Key.obsm.spatial_warped,
    reference: str | None = None,
    kind: Literal["translation", "rigid", "similarity", "affine"] | None = None,
    landmarks: Mapping[str, np.ndarray] | str | None = None,
    icp_kwargs: dict[str, Any] | None = None,
    coordinate_system: str | None = None,
    spot_diameter: float | None = None,
    genes: Literal["intersection", "union"] = "intersection",
    min_overlap: float = 0.1,
    key_added: str = Key.table.stack,
) -> SpatialData:
    """Stack serial sections into one 3D sample: every element kept, one aligned frame, one table over all spots.

    The 3D sample that ASIGN :cite:p:`zhu2024asign` imputes on (:func:`stmap.tl.impute_3d`).

    Nothing is resampled: each section's elements get a coordinate system named after the section (their original
    transformation) plus the aligned frame ``'aligned'`` (2D, micrometres) and ``'aligned_3d'`` (x, y, z in
    micrometres: the 2D alignment with the section's ``z`` as third output axis). Images stay lazy.

    Parameters
    ----------
    sdatas
        The sections: a list of SpatialData objects (one section each, e.g. :func:`stmap.datasets.her2st`), a dict
        ``{section name: SpatialData}``, one SpatialData with one table per section (then a section's elements
        are the table's region and the elements whose names start with the section name), or one SpatialData whose
        one table (or ``table_keys=<name>``) holds several sections told apart by ``obs[section_key]``: it is split
        by section first (the spots of a section in one element per section, or one element holding every
        section's spots, subset per section into ``'<section>_<element>'``); elements whose names start with a
        section name belong to it, any other element (e.g. one image of the whole slide) is kept once, in every
        section's coordinate system but not in the aligned frames.
    sections
        Section names (default: the dict keys, else the table names); for one table holding several sections, the
        sections to stack (default: all, in the order of the column's categories, else of appearance).
    section_key
        ``obs`` column of the stacked table naming each spot's section (and, for one input table holding several
        sections, the column they are split by).
    table_keys
        The table of each section (list aligned with the sections, or dict by section); default: the table named
        like the section, else the section's only table. One name: the one table holding every section.
    z
        Position of the sections along the cutting axis, in micrometres: one value per section (list or dict), or
        the step between consecutive sections (a positive number). Default: the step is the median in-plane spot
        spacing (200 um for legacy ST), so that one layer apart weighs like one spot apart, as ASIGN treats adjacent
        layers. Sections are ordered by ``z``.
    transforms
        How sections are aligned: ``None`` (already aligned: each section's coordinate system is the aligned
        frame); ``'warped'`` (fit ``kind``, default affine, from each section's spots onto their registered
        coordinates ``obsm[warped_key]``, expressed in the reference section's frame, as HER2ST patient C provides);
        ``'icp'`` (trimmed ICP of spot positions onto the neighbouring, already aligned section, ``kind`` default
        rigid, chained from the reference, 72 starting rotations; spots on a regular lattice snap to the lattice,
        so expect errors up to half a spot spacing, and check the result); ``'landmarks'`` (fit ``kind``, default
        similarity, of corresponding ``landmarks`` onto the reference's); or one 3x3 ``(x, y, 1)`` matrix per
        section mapping its coordinate system to the aligned frame in micrometres.
    warped_key
        ``obsm`` key of registered coordinates for ``transforms='warped'`` (NaN rows are ignored in the fit).
    reference
        Section whose frame is the aligned frame (default: the middle section for ``'icp'``, else the first).
    kind
        Transform family for ``'warped'``, ``'icp'`` and ``'landmarks'`` (see :func:`stmap.pp.fit_transform`).
    landmarks
        For ``'landmarks'``: ``{section: (k, 2) array}`` in the section's coordinate system, rows corresponding
        across sections, or the name of a points element present in every section.
    icp_kwargs
        Options of :func:`stmap.pp.icp`.
    coordinate_system
        Coordinate system of the sections' elements (default ``'global'`` or the only one).
    spot_diameter
        Spot diameter in micrometres when the elements do not carry it (points) or to override it.
    genes
        ``'intersection'`` (default) or ``'union'`` (zero counts where a section lacks a gene) of the measured
        sections' genes.
    min_overlap
        Adjacent sections must overlap after alignment: at least this fraction of the spots of one of them has a
        spot of the other within one spot spacing.
    key_added
        Name of the stacked table.

    Returns
    -------
    A new :class:`spatialdata.SpatialData` (the inputs are untouched) holding every section's elements (renamed
    ``'<section>_<name>'`` only when names collide) and the table ``key_added`` annotating every section's spots:

    - ``X`` and ``layers['counts']``: counts on the shared genes (CSR float32; rows of unmeasured sections are 0).
    - ``obs_names``: ``'<section>:<original obs name>'``; every obs column of the inputs is kept.
    - ``obs[section_key]``: categorical, categories ordered by ``z``; ``obs['measured']``: the section's table has
      expression; ``obs['spot_radius_um']``: the spot radius; ``obs['region']``, ``obs['instance_id']``: the
      annotated element and instance.
    - ``obsm['spatial']``: spot centres in the section's own coordinate system; ``obsm['spatial_3d']``: ``(n, 3)``
      x, y, z in micrometres in the aligned frame; ``obsm`` arrays present in every section (e.g.
      ``spatial_warped``) are kept.
    - ``var['n_sections']``: measured sections holding the gene.
    - ``uns['stmap_stack']``: ``sections`` (ordered by z), ``z`` (um), ``transforms`` (per section, 3x3
      coordinate system -> aligned frame, um), ``method``, ``kind``, ``reference``, ``rmse_um`` (per section, of the
      fit), ``spot_radius_um`` (median), ``spot_spacing_um``, ``overlap_fraction`` (per adjacent pair),
      ``section_info`` (per section: ``table_key``, ``region``, ``coordinate_system``, ``images``, ``elements``),
      ``params``.

    Raises
    ------
    StmapInputError
        Fewer than two sections, a parameter of the wrong type or out of range, unknown tables/keys, unknown units,
        no shared genes, missing registered coordinates or landmarks, sections that do not overlap after alignment
        (pass ``transforms=``).

    See Also
    --------
    :func:`stmap.pp.spot_graph_3d`
        The 3D spot graph of the stack.
    :func:`stmap.tl.impute_3d`
        Imputes expression on the unmeasured sections.
    :func:`stmap.pl.sections_3d`
        Draws the sections.
    :doc:`/tutorials/impute3d`
        Tutorial.

    Examples
    --------
    >>> import stmap as st
    >>> sections = st.datasets.simulate_stack(3, n_genes=20, grid=8, seed=0)  # three serial sections
    >>> stack = st.pp.stack_sections(sections, transforms="warped")
    >>> table = stack.tables["stack"]
    >>> table.n_obs, list(table.obs["section"].cat.categories), table.obsm["spatial_3d"].shape[1]
    (67, ['S0', 'S1', 'S2'], 3)
    """
    from ..._core._resolve import transform_points
    from ..._core._write import sanitize_params

    params = {
        "section_key": section_key,
        "z": z,
        "transforms": transforms if transforms is None or isinstance(transforms, str) else "given",
        "warped_key": warped_key,
        "reference": reference,
        "kind": kind,
        "coordinate_system": coordinate_system,
        "spot_diameter": spot_diameter,
        "genes": genes,
        "min_overlap": min_overlap,
    }
    start = logg.info("stacking sections")
    secs = gather(sdatas, sections, table_keys, coordinate_system, spot_diameter, section_key)
    spacing = float(np.nanmedian([median_spacing(s.coords * s.um) for s in secs]))
    transforms = key_transforms(transforms, secs)  # matrices given in input order, keyed before sorting by z
    secs, zs = order_by_z(secs, z, spacing)
    gene_list = gene_union(secs, genes)
    al = alignments(
        secs,
        transforms,
        warped_key=warped_key,
        reference=reference,
        kind=kind,
        landmarks=landmarks,
        icp_kwargs=icp_kwargs,
    )
    xy = [transform_points(m, s.coords) for m, s in zip(al.mats, secs)]
    fracs = overlap_fractions(xy, spacing)
    check_aligned(secs, fracs, spacing, min_overlap)
    els = stack_elements(secs, al.mats, zs)
    table = stack_table(secs, gene_list, xy, zs, section_key)
    table.uns[Key.uns.stack] = _stack_uns(secs, zs, al, kind, spacing, fracs, els.info)
    table.uns[Key.uns.stack]["params"] = sanitize_params(params)
    out = new_stack(els, annotate(table, secs, els.region_of), key_added)
    logg.info(
        "    finished",
        time=start,
        deep=f"stacked {len(secs)} sections ({table.n_obs} spots x {table.n_vars} genes) into table {key_added!r}, "
        f"coordinate systems {ALIGNED!r}, {ALIGNED_3D!r} and one per section",
    )
    return out
