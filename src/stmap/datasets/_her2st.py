"""HER2-positive breast tumour legacy Spatial Transcriptomics (HER2ST; Andersson et al. 2021, Nat Commun)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from stmap._core._constants import Key
from stmap._core._elements import affine_matrix, make_circles, make_image, make_table, new_spatialdata
from stmap._core._errors import StmapInputError
from stmap._core._io import counts_adata, data_root, lazy_image, require_files
from stmap._core._params import Instance, validate_params

if TYPE_CHECKING:
    from spatialdata import SpatialData

FLAG = Instance((bool,))

__all__ = ["her2st", "her2st_deconvolution"]

#: Sections this reader knows (patient A: A1; patient C: six serial sections).
SECTIONS = ("A1", "C1", "C2", "C3", "C4", "C5", "C6")
#: Legacy ST array: 100 um spots, 200 um centre to centre on a square grid of array coordinates.
SPOT_DIAMETER_UM = 100.0
SPOT_SPACING_UM = 200.0
#: Full-resolution H&E JPEG of each section (file name in the almaan/her2st repository).
_IMAGES = {
    "C2": "5714_HE_BT_C2.jpg",
    "C3": "5714_HE_BT_D1.jpg",
    "C4": "5714_HE_BT_D2.jpg",
    "C5": "5714_HE_BT_E1.jpg",
    "C6": "5714_HE_BT_E2.jpg",
}
#: A1: the repository's app ships a 2000 px wide PNG of the 6954 x 7435 px original.
_A1_PNG = "A1_HE_image_dark.png"
_A1_FULLRES_WIDTH = 6954
#: Pathologist-annotation thumbnail pasted into the top-right corner of the A1 PNG: rows 0..534, cols 1500..1999.
_A1_INSET = (slice(0, 535), slice(1500, None))
_PATHOLOGIST_SECTIONS = ("A1", "C1")
_CANCER_PATHOLOGIST = ("invasive cancer", "cancer in situ")

_REPO_RAW = "https://raw.githubusercontent.com/almaan/her2st/master/"


def _relpaths(section: str, load_image: bool) -> dict[str, str]:
    rel = {
        "counts": f"her2st/counts/{section}.tsv.gz",
        "spots": f"her2st/spotfiles/{section}_selection.tsv",
    }
    if section.startswith("C"):
        rel["clusters"] = f"her2st/cluster_labels/{section}-cluster-annotation.tsv.gz"
        rel["motivation"] = "her2st/cluster_labels/motivation.csv"
    if section in _PATHOLOGIST_SECTIONS:
        rel["pathologist"] = f"her2st/pathologist_labels/{section}_labeled_coordinates.tsv"
    if load_image:
        if section in _IMAGES:
            rel["image"] = f"her2st/images/{section}_{_IMAGES[section]}"
        elif section == "A1":
            rel["image"] = f"her2st/images/{_A1_PNG}"
    return rel


def _remote(section: str, key: str) -> str:
    """Path of a file in the almaan/her2st repository."""
    return {
        "counts": f"data/ST-cnts/{section}.tsv.gz",
        "spots": f"data/ST-spotfiles/{section}_selection.tsv",
        "clusters": f"res/ST-cluster/lbl/{section}-cluster-annotation.tsv.gz",
        "motivation": "res/ST-cluster/motivation.csv",
        "pathologist": f"data/ST-pat/lbl/{section}_labeled_coordinates.tsv",
        "image": f"app/www/imgs/{_A1_PNG}" if section == "A1" else f"data/ST-imgs/C/{section}/{_IMAGES.get(section)}",
    }[key]


def _download(root: Path, section: str, rel: dict[str, str]) -> None:
    import pooch

    for key, r in rel.items():
        target = root / r
        if target.exists():
            continue
        pooch.retrieve(
            _REPO_RAW + _remote(section, key),
            known_hash=None,
            fname=target.name,
            path=target.parent,
            progressbar=False,
        )


def _array_key(x, y) -> pd.Index:
    """``'XxY'`` keys from (possibly adjusted, non-integer) array coordinates, rounded to the grid."""
    xi = np.rint(np.asarray(x, dtype=float)).astype(int)
    yi = np.rint(np.asarray(y, dtype=float)).astype(int)
    return pd.Index([f"{a}x{b}" for a, b in zip(xi, yi, strict=True)])


def estimate_mpp(array_xy: np.ndarray, pixel_xy: np.ndarray, spacing_um: float = SPOT_SPACING_UM) -> float:
    """Micrometres per pixel from spots on an array grid with known centre-to-centre spacing.

    The median pixel distance between spots that are neighbours on the array (one step in x or in y) is taken as
    ``spacing_um``.

    Parameters
    ----------
    array_xy
        ``(n, 2)`` integer array coordinates.
    pixel_xy
        ``(n, 2)`` pixel coordinates of the same spots.
    spacing_um
        Distance in micrometres of one array step.

    Returns
    -------
    Micrometres per pixel.
    """
    from scipy.spatial import cKDTree

    a = np.rint(np.asarray(array_xy, dtype=float))
    p = np.asarray(pixel_xy, dtype=float)
    pairs = cKDTree(a).query_pairs(1.0 + 1e-6, output_type="ndarray")
    if len(pairs) == 0:
        raise StmapInputError("Cannot estimate the pixel size: no two spots are neighbours on the array grid.")
    d = np.linalg.norm(p[pairs[:, 0]] - p[pairs[:, 1]], axis=1)
    return float(spacing_um / np.median(d))


def read_motivation(path: str | Path) -> dict[str, dict[int, str]]:
    """Cluster annotations of ``motivation.csv``: ``{patient: {cluster: 'annotated as'}}``.

    The file is not valid CSV (annotations contain unquoted commas, e.g. ``'immune : APC, B-cell, T-cell'``); an
    annotation continues over the following fields that start with a space.
    """
    out: dict[str, dict[int, str]] = {}
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for line in lines[1:]:
        parts = line.split(",")
        if len(parts) < 3 or not parts[1].strip().isdigit():
            continue
        text = [parts[2]]
        for p in parts[3:]:
            if not p.startswith(" "):
                break
            text.append(p)
        out.setdefault(parts[0].strip(), {})[int(parts[1])] = ",".join(text).strip()
    return out


def _read_counts(path: Path) -> pd.DataFrame:
    counts = pd.read_csv(path, sep="\t", index_col=0, engine="c")
    counts.index = counts.index.astype(str)
    return counts


@validate_params(section=Instance((str,)), path=[Instance((str, Path)), None], load_image=FLAG, download=FLAG)
def her2st(
    section: str = "C1",
    *,
    path: str | Path | None = None,
    load_image: bool = True,
    download: bool = False,
) -> SpatialData:
    """HER2-positive breast tumour, legacy Spatial Transcriptomics (HER2ST, :cite:`andersson2021`).

    One section of the HER2ST data of Andersson et al. (2021, Nat Commun 12:6012), as published in the
    ``almaan/her2st`` GitHub repository: patient A (section ``A1``, with pathologist region labels) or patient C
    (six serial sections ``C1`` to ``C6``, with expression-cluster labels and registered coordinates).
    Legacy ST spots are 100 um wide, 200 um centre to centre.

    Parameters
    ----------
    section
        ``'A1'`` or ``'C1'`` .. ``'C6'``.
    path
        Data root holding ``her2st/counts/<section>.tsv.gz``, ``her2st/spotfiles/<section>_selection.tsv``,
        ``her2st/cluster_labels/``, ``her2st/pathologist_labels/`` and ``her2st/images/`` (the layout of the shared
        data folder). Defaults to :attr:`stmap.settings.datasetdir` (``$STMAP_DATA_DIR``).
    load_image
        Add the H&E image (lazy; decoded when first computed or written). ``C1`` has no image in the repository,
        so its result never holds one.
    download
        Download missing files from ``raw.githubusercontent.com/almaan/her2st`` into ``path`` with :mod:`pooch`.
        Off by default: missing files raise :class:`FileNotFoundError`.

    Returns
    -------
    :class:`spatialdata.SpatialData` with coordinate system ``'global'`` in micrometres, holding

    ``'<section>_he'`` (image, not for ``C1`` or with ``load_image=False``)
        RGB H&E (``c`` = ``r, g, b``), multiscale. ``C2`` to ``C6``: the full-resolution JPEG (~9300 x 9900 px).
        ``A1``: the repository's 2000 px wide dark-background PNG, 3.477 full-resolution pixels per PNG pixel, with
        the pathologist-annotation thumbnail in its top-right corner set to background (black). Its transformation
        maps pixels to micrometres, so spots land on the tissue.
    ``'<section>_spots'`` (shapes)
        Circles at the spot centres in micrometres (full-resolution pixels times ``mpp``), radius 50 um;
        index ``0..n-1``.
    ``'<section>'`` (table)
        Spots x genes, annotating ``'<section>_spots'``; only spots with counts (spots in the spot file without
        counts are dropped). ``X`` and ``layers['counts']``: raw UMI counts (CSR, float32). ``var_names``: gene
        symbols as published (made unique). ``obs_names``: the source spot ids ``'XxY'`` (array coordinates).

        - ``obs['section']``: the section name.
        - ``obs['array_row']``, ``obs['array_col']``: array ``y`` and ``x``.
        - ``obs['cluster']`` (patient C): expression cluster (categorical ``'0'`` to ``'6'``) from
          ``<section>-cluster-annotation.tsv.gz``; NaN for the few spots the file does not list.
        - ``obs['cluster_annotation']`` (patient C): the cluster's annotation in ``motivation.csv``
          (e.g. ``'cancer 1'``, ``'immune : APC, B-cell, T-cell'``, ``'unknown'``), categorical.
        - ``obs['cancer']`` (bool): patient C, the spot's cluster is annotated as cancer in ``motivation.csv``
          (clusters 2, 3, 4); ``False`` also for spots without a cluster label (filter on
          ``obs['cluster'].notna()``). ``A1`` (no cluster file): the pathologist label is ``'invasive cancer'`` or
          ``'cancer in situ'``. ``uns['stmap']['cancer_source']`` says which.
        - ``obs['pathologist_label']`` (``A1``, ``C1``): the published pathologist region label (categorical),
          matched by rounded array coordinates; NaN where unmatched.
        - ``obsm['spatial']``: spot centres in full-resolution image pixels ``(x, y)``.
        - ``obsm['spatial_warped']`` (patient C): ``warped_x, warped_y`` from the cluster annotation file,
          coordinates registered across the six C sections (full-resolution pixels of ``C1``'s frame); NaN rows for
          spots without a cluster label.
        - ``uns['stmap']``: ``mpp`` (micrometres per full-resolution pixel, estimated as 200 um over the median
          pixel distance of array-grid neighbours; ~0.69 for C, ~0.92 for A1), ``spot_diameter_um`` (100),
          ``spot_spacing_um`` (200), ``source``, ``section``, ``patient``, ``cancer_source``, ``image_scale``
          (full-resolution pixels per image pixel) when an image is present.

    See Also
    --------
    :func:`stmap.datasets.her2st_deconvolution`
        The published cell-type proportions of the spots.
    :doc:`/tutorials/her2st_basics`
        Tutorial.
    :doc:`/tutorials/ctr`
        Tutorial.

    Examples
    --------
    >>> import stmap as st
    >>> sdata = st.datasets.her2st("A1", load_image=False)  # files under st.settings.datasetdir
    >>> sdata.tables["A1"].shape  # spots x genes
    (346, 15045)
    >>> int(sdata.tables["A1"].obs["cancer"].sum())  # spots the pathologist marked as cancer
    303
    """
    section = section.upper()
    if section not in SECTIONS:
        raise StmapInputError(f"Unknown HER2ST section {section!r}. Available: {', '.join(SECTIONS)}.")
    files = _section_files(section, path, load_image, download)
    counts, xy, pix, mpp = _read_spots(files, section)
    keys = _array_key(xy[:, 0], xy[:, 1])
    obs = pd.DataFrame(index=counts.index)
    obs[Key.obs.section] = pd.Categorical([section] * len(obs))
    obs["array_row"] = np.rint(xy[:, 1]).astype(int)
    obs["array_col"] = np.rint(xy[:, 0]).astype(int)
    obsm: dict[str, np.ndarray] = {Key.obsm.spatial: pix}
    cancer_source = None
    if "clusters" in files:  # patient C: expression clusters, their annotation, registered coordinates
        cancer_source = _add_clusters(obs, obsm, files, keys, section)
    if "pathologist" in files:  # A1, C1
        cancer_source = _add_pathologist(obs, files["pathologist"], keys) or cancer_source
    adata = counts_adata(counts.to_numpy(), obs.index, counts.columns, obs=obs)
    for k, v in obsm.items():
        adata.obsm[k] = v
    shapes_name, image_name = f"{section}_spots", f"{section}_he"
    info: dict[str, Any] = {
        "mpp": mpp,
        "spot_diameter_um": SPOT_DIAMETER_UM,
        "spot_spacing_um": SPOT_SPACING_UM,
        "source": "HER2ST, Andersson et al. 2021 Nat Commun 12:6012; github.com/almaan/her2st",
        "section": section,
        "patient": section[0],
        "cancer_source": cancer_source or "none",
    }
    images = {}
    if "image" in files:
        images[image_name], info["image_scale"] = _section_image(files["image"], section, mpp)
        info["image"] = image_name
    adata.uns[Key.uns.stmap] = info
    shapes = make_circles(pix * mpp, SPOT_DIAMETER_UM / 2, index=np.arange(adata.n_obs))
    table = make_table(adata, region=shapes_name, instance_ids=np.arange(adata.n_obs))
    return new_spatialdata(images=images, shapes={shapes_name: shapes}, tables={section: table}, units={Key.cs: "um"})


def _section_files(section: str, path: str | Path | None, load_image: bool, download: bool) -> dict[str, Path]:
    """The section's files under the data root (downloaded first when asked), by role."""
    root = data_root(path)
    rel = _relpaths(section, load_image)
    if download:
        _download(root, section, rel)
    hint = "Or call `her2st(..., download=True)` (needs internet)."
    return dict(zip(rel, require_files(root, list(rel.values()), "HER2ST", hint=hint), strict=True))


def _read_spots(files: dict[str, Path], section: str) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, float]:
    """Counts of the spots with a pixel position, their array ``(x, y)``, pixel centres and µm per pixel."""
    counts = _read_counts(files["counts"])
    xy = counts.index.str.split("x", expand=True).to_frame(index=False).astype(float).to_numpy()
    keys = _array_key(xy[:, 0], xy[:, 1])
    spots = pd.read_csv(files["spots"], sep="\t")
    spots.index = _array_key(spots["x"], spots["y"])
    spots = spots[~spots.index.duplicated()]
    has_pos = keys.isin(spots.index)
    if not has_pos.all():
        warnings.warn(
            f"HER2ST {section}: {int((~has_pos).sum())} spots with counts have no pixel position in the spot file; "
            "they are dropped.",
            UserWarning,
            stacklevel=4,
        )
        counts, keys, xy = counts.loc[has_pos], keys[has_pos], xy[has_pos]
    pix = spots.loc[keys, ["pixel_x", "pixel_y"]].to_numpy(dtype=float)
    sel = spots[["x", "y"]].to_numpy(dtype=float)
    mpp = estimate_mpp(sel, spots[["pixel_x", "pixel_y"]].to_numpy(dtype=float))
    return counts, xy, pix, mpp


def _add_clusters(
    obs: pd.DataFrame, obsm: dict[str, np.ndarray], files: dict[str, Path], keys: pd.Index, section: str
) -> str:
    """Patient C: expression cluster, its annotation in ``motivation.csv``, cancer flag, registered coordinates."""
    cl = pd.read_csv(files["clusters"], sep="\t", index_col=0)
    cl.index = _array_key(cl["x"], cl["y"])
    cl = cl[~cl.index.duplicated()].reindex(keys)
    annot = read_motivation(files["motivation"]).get(section[0], {})
    lab = cl["label"].to_numpy(dtype=float)
    cats = [str(c) for c in sorted(set(annot) | {int(v) for v in lab[~np.isnan(lab)]})]
    cluster = [None if np.isnan(v) else str(int(v)) for v in lab]
    obs["cluster"] = pd.Categorical(cluster, categories=cats)
    text = [None if c is None else annot.get(int(c), "unknown") for c in cluster]
    obs["cluster_annotation"] = pd.Categorical(text)
    obs["cancer"] = np.array([t is not None and t.startswith("cancer") for t in text], dtype=bool)
    obsm[Key.obsm.spatial_warped] = cl[["warped_x", "warped_y"]].to_numpy(dtype=float)
    return "motivation.csv cluster annotation"


def _add_pathologist(obs: pd.DataFrame, file: Path, keys: pd.Index) -> str | None:
    """A1, C1: the pathologist's region label; the cancer flag from it when no cluster annotation set one."""
    pl = pd.read_csv(file, sep="\t")
    pl.index = _array_key(pl["x"], pl["y"])
    pl = pl[~pl.index.duplicated()]
    labels = pl["label"].reindex(keys)
    obs["pathologist_label"] = pd.Categorical(labels.to_numpy(), categories=sorted(pl["label"].dropna().unique()))
    if "cancer" in obs:
        return None
    obs["cancer"] = labels.isin(_CANCER_PATHOLOGIST).to_numpy()
    return "pathologist_label in ('invasive cancer', 'cancer in situ')"


def _section_image(file: Path, section: str, mpp: float) -> tuple[Any, float]:
    """The lazy H&E element (pixels -> µm) and its full-resolution pixels per image pixel."""
    if section == "A1":
        arr = lazy_image(file, "RGB", mask=_A1_INSET, fill=0)
        scale = _A1_FULLRES_WIDTH / arr.shape[1]
    else:
        arr = lazy_image(file, "RGB")
        scale = 1.0
    image = make_image(
        arr,
        dims=("y", "x", "c"),
        transform=affine_matrix(scale * mpp),
        c_coords=["r", "g", "b"],
        scale_factors=[2, 2, 2] if max(arr.shape) > 4096 else [2, 2],
        chunks=(3, 1024, 1024),
    )
    return image, scale


@validate_params(section=Instance((str,)), path=[Instance((str, Path)), None])
def her2st_deconvolution(section: str = "C1", *, path: str | Path | None = None) -> pd.DataFrame:
    """Published per-spot proportions of 8 major cell types (stereoscope) for one HER2ST section.

    The deconvolution published with the data :cite:p:`andersson2021`.

    Parameters
    ----------
    section
        Section name, ``'A1'`` .. ``'H3'`` (as in the archive).
    path
        Data root holding ``her2st/deconv/major_proportions.zip``; defaults to :attr:`stmap.settings.datasetdir`.

    Returns
    -------
    :class:`pandas.DataFrame` indexed by spot id ``'XxY'`` (the table's ``obs_names``), one column per type
    (B-cells, CAFs, Endothelial, Epithelial, Myeloid, Plasma Cells, PVL, T-cells); rows sum to 1. Put it in a
    table with ``table.obsm['stmap_cell_type_fractions'] = df.reindex(table.obs_names)``.

    See Also
    --------
    :func:`stmap.datasets.her2st`
        The sections.
    :func:`stmap.metrics.proportion_metrics`
        Compares proportions.

    Examples
    --------
    >>> import stmap as st
    >>> proportions = st.datasets.her2st_deconvolution("A1")  # files under st.settings.datasetdir
    >>> proportions.shape
    (346, 8)
    >>> sdata = st.datasets.her2st("A1", load_image=False)
    >>> table = sdata.tables["A1"]
    >>> table.obsm["stmap_cell_type_fractions"] = proportions.reindex(table.obs_names)
    """
    import zipfile

    section = section.upper()
    (zpath,) = require_files(data_root(path), ["her2st/deconv/major_proportions.zip"], "HER2ST deconvolution")
    with zipfile.ZipFile(zpath) as z:
        names = [n for n in z.namelist() if Path(n).name == f"{section}-proportion.tsv"]
        if not names:
            avail = sorted(Path(n).name.split("-")[0] for n in z.namelist() if n.endswith("-proportion.tsv"))
            raise StmapInputError(f"No deconvolution for section {section!r}. Available: {', '.join(avail)}.")
        with z.open(sorted(names)[0]) as fh:
            df = pd.read_csv(fh, sep="\t", index_col=0)
    df.index = _array_key(*zip(*(s.split("x") for s in df.index.astype(str)), strict=True))
    df.columns = [str(c) for c in df.columns]
    return df
