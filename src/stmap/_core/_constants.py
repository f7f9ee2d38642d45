"""Key names used by every tool, in one place (the squidpy ``Key`` idea)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Key", "MappingKeys", "CTRKeys", "BlobKeys", "GeneMapKeys"]

_MAPPING = "stmap_mapping"
_PROJECTED = "stmap_projected"


@dataclass(frozen=True)
class MappingKeys:
    """Every name that one ``st.tl.map_cells(..., key_added=...)`` run writes (read back by ``st.pl.mapping``).

    The default ``key_added='stmap_mapping'`` gives the ``stmap_*`` names; another key prefixes them with itself.
    """

    #: ``.obsm`` of the spot table: cell-type fractions per spot.
    fractions: str
    #: ``.obsm`` of the spot table: cells of each type per spot.
    counts: str
    #: ``.obs`` of the spot table: cells per spot.
    n_cells: str
    #: ``.obs`` of the reference cells: the spot each cell was placed in.
    spot: str
    #: ``.uns`` / ``.obsm`` key of the run itself (parameters, the cells x spots mapping).
    mapping: str
    #: ``.uns`` of the reference: the assignment of cells to spots.
    assignment: str
    #: ``.obs`` of single-cell targets: the most likely cell type.
    label: str
    #: ``.obs`` of single-cell targets: its probability.
    confidence: str
    #: ``.obsm`` of the spot table: lower / upper ends of the composition intervals (``intervals=`` runs).
    fractions_lower: str
    fractions_upper: str
    #: ``.obs`` of the reference (greedy mode) and of the placed-cells table: the placement's confidence.
    placement_confidence: str
    #: ``.uns[mapping]`` entry of the spot table with ``copy=True``: what the run writes on the reference otherwise
    #: (``cell_ids``, ``spot_ids``, ``scores``, ``assignment``, greedy mode ``spot``).
    reference: str = "reference"


@dataclass(frozen=True)
class CTRKeys:
    """Every name that one ``st.tl.detect_ctr(..., key_added=...)`` run writes (read back by ``st.pl.ctr``)."""

    #: ``.obs``: the categorical call ``'CTR'`` / ``'non-CTR'``; also the ``.uns`` key of the run.
    call: str
    #: ``.obs``: the cancer probability.
    prob: str
    #: ``.obsm``: the VAE posterior ``(mu, log var)`` per spot.
    latent: str
    #: ``.uns``: the palette of the call.
    colors: str


@dataclass(frozen=True)
class BlobKeys:
    """Every name that one ``st.pp.detect_blobs(..., key_added=...)`` run writes."""

    #: Points element of the blob centroids.
    points: str
    #: Table annotating the points (one row per blob).
    table: str
    #: Labels element of the regions (``labels=True``).
    labels: str


@dataclass(frozen=True)
class GeneMapKeys:
    """Every name that one ``st.tl.gene_maps(..., key_added=...)`` run writes (read back by ``st.pl.gene_maps``).

    The default ``key_added=None`` gives the element ``'<image>_gene_maps'`` and the table keys ``'stmap_gene_maps'``;
    another key names both.
    """

    #: Image element of the maps (one channel per gene).
    element: str
    #: Image element of the reconstructed H&E (``reconstruct=True``).
    reconstruction: str
    #: ``.obsm`` (maps averaged over each spot's disc) and ``.uns`` (the run's record) key of the spot table.
    key: str
    #: ``.obs`` of the spot table: whether the spot was used for training.
    train: str


@dataclass(frozen=True)
class Impute3DKeys:
    """Every name that one ``st.tl.impute_3d(..., key_added=...)`` run writes (read back by ``st.pl.sections_3d``).

    The graph parts are ``.obsp`` entries named by :meth:`Key.graph_3d`.
    """

    #: ``.obsm`` (the imputed genes, a DataFrame) and ``.uns`` (the run's record) key.
    key: str
    #: ``.layers``: the imputed values over every gene, NaN outside the imputed ones (:meth:`Key.imputed_layer`).
    layer: str
    #: ``.obs``: which spots were measured.
    measured: str


class Key:
    """Default names of the keys that stmap reads and writes."""

    class default:
        """Default ``key_added`` of the tools that write under one key."""

        #: ``st.tl.density``: the density image and ``.uns`` key.
        density = "stmap_density"
        #: ``st.tl.rank_densities``: the ``.uns`` key of the ranking.
        density_ranking = "stmap_density_ranking"
        #: ``st.pp.detect_blobs``: the points element and ``.uns`` key.
        blobs = "stmap_blobs"
        #: ``st.pp.register``: the ``.uns`` key (and the name of its one-row table when none is given).
        registration = "stmap_registration"
        #: ``st.pp.align_sections``: the ``.uns`` key and the name of its one-row table.
        alignment = "stmap_alignment"
        #: ``st.pp.spot_graph_3d``: the ``.uns`` key and the prefix of the ``.obsp`` graph parts.
        spot_graph_3d = "stmap_graph"
        #: ``st.tl.impute_3d``: the ``.obsm``/``.uns`` key and the prefix of the names it writes.
        impute_3d = "stmap_impute3d"
        #: ``st.tl.detect_ctr``: the call column and ``.uns`` key.
        ctr = "stmap_ctr"
        #: ``st.tl.gene_maps``: the spot table's ``.obsm``/``.uns`` key (the element is ``'<image>_gene_maps'``).
        gene_maps = "stmap_gene_maps"
        #: ``st.tl.map_cells``: the ``.uns`` key of the run and ``.obsm`` key of the reference's scores.
        mapping = _MAPPING
        #: ``st.tl.project_genes``: the ``.uns`` key (and ``.obsm`` key of the projection in a plain AnnData).
        projected = _PROJECTED

    class obsm:
        """Keys in ``.obsm``."""

        spatial = "spatial"
        spatial_warped = "spatial_warped"
        spatial_3d = "spatial_3d"
        histology = "X_histology"
        cell_type_fractions = "stmap_cell_type_fractions"
        cell_type_counts = "stmap_cell_type_counts"
        mapping = _MAPPING

    class obs:
        """Keys in ``.obs``."""

        region = "region"
        instance = "instance_id"
        n_cells = "stmap_n_cells"
        spot = "stmap_spot"
        ctr_prob = "stmap_ctr_prob"
        ctr = "stmap_ctr"
        section = "section"
        measured = "measured"
        cell_type = "cell_type"
        #: Spot radius in micrometres, per spot, of a stacked table (``st.pp.stack_sections``).
        spot_radius_um = "spot_radius_um"

    class uns:
        """Keys in ``.uns``."""

        spatial = "spatial"
        spatialdata_attrs = "spatialdata_attrs"
        params = "params"
        stmap = "stmap"
        #: On tables that a tool made (e.g. placed cells): ``{"tool": key_added, "table": source table}``.
        derived = "stmap_derived"
        #: Stacking metadata of a table made by ``st.pp.stack_sections``.
        stack = "stmap_stack"

    class layers:
        """Keys in ``.layers``."""

        counts = "counts"
        imputed = "imputed"

    #: SpatialData attribute holding the physical unit of each coordinate system, e.g. ``{"global": "um"}``.
    units_attr = "stmap_coordinate_units"
    #: Default coordinate system name.
    cs = "global"
    #: Aligned frame (micrometres) of stacked sections (``st.pp.stack_sections``).
    cs_aligned = "aligned"
    #: The aligned frame with each section's position as ``z`` (``st.pp.stack_sections``).
    cs_aligned_3d = "aligned_3d"

    class table:
        """Names of the tables that tools add to a SpatialData object."""

        #: The stacked-sections table of ``st.pp.stack_sections`` (its default ``key_added``).
        stack = "stack"

        @staticmethod
        def cells(spot_table: str, key_added: str = _MAPPING) -> str:
            """Table of placed cells made by ``st.tl.map_cells`` from ``spot_table``."""
            return f"{spot_table}_cells" if key_added == _MAPPING else f"{spot_table}_{key_added}_cells"

        @staticmethod
        def cells_points(spot_table: str, key_added: str = _MAPPING) -> str:
            """Points element of the placed cells, annotated by :meth:`cells`."""
            return f"{Key.table.cells(spot_table, key_added)}_points"

        @staticmethod
        def projected(spot_table: str, key_added: str = _PROJECTED) -> str:
            """Table of projected genes made by ``st.tl.project_genes`` for ``spot_table``."""
            return f"{spot_table}_projected" if key_added == _PROJECTED else f"{spot_table}_{key_added}"

        @staticmethod
        def groups(key_added: str) -> str:
            """Table with one row per group of points (``st.tl.density(groupby=...)``)."""
            return f"{key_added}_groups"

        @staticmethod
        def of(key_added: str) -> str:
            """Table that holds a points-level result keyed ``key_added`` (rankings, blobs)."""
            return f"{key_added}_table"

    @staticmethod
    def mapping(key_added: str = _MAPPING) -> MappingKeys:
        """All names written by one ``st.tl.map_cells`` run with this ``key_added``."""
        prefix = "stmap" if key_added == _MAPPING else key_added
        return MappingKeys(
            fractions=f"{prefix}_cell_type_fractions",
            counts=f"{prefix}_cell_type_counts",
            n_cells=f"{prefix}_n_cells",
            spot=f"{prefix}_spot",
            mapping=key_added,
            assignment=f"{key_added}_assignment",
            label=f"{prefix}_cell_type",
            confidence=f"{prefix}_cell_type_confidence",
            fractions_lower=f"{prefix}_cell_type_fractions_lower",
            fractions_upper=f"{prefix}_cell_type_fractions_upper",
            placement_confidence=f"{prefix}_placement_confidence",
        )

    @staticmethod
    def ctr(key_added: str = "stmap_ctr") -> CTRKeys:
        """All names written by one ``st.tl.detect_ctr`` run with this ``key_added``."""
        return CTRKeys(
            call=key_added, prob=f"{key_added}_prob", latent=f"{key_added}_latent", colors=Key.colors(key_added)
        )

    @staticmethod
    def blobs(key_added: str = "stmap_blobs") -> BlobKeys:
        """All names written by one ``st.pp.detect_blobs`` run with this ``key_added``."""
        return BlobKeys(points=key_added, table=Key.table.of(key_added), labels=f"{key_added}_labels")

    @staticmethod
    def imputed_layer(key_added: str = "stmap_impute3d") -> str:
        """``.layers`` name of the values predicted by ``st.tl.impute_3d(..., key_added=...)``.

        The default key gives ``'imputed'``; another key gives ``'<key_added>_imputed'``, so that two runs with
        different keys do not overwrite each other.
        """
        return Key.layers.imputed if key_added == "stmap_impute3d" else f"{key_added}_imputed"

    @staticmethod
    def impute_3d(key_added: str = "stmap_impute3d") -> Impute3DKeys:
        """All names written by one ``st.tl.impute_3d`` run with this ``key_added`` (graph parts: :meth:`graph_3d`)."""
        return Impute3DKeys(key=key_added, layer=Key.imputed_layer(key_added), measured=f"{key_added}_measured")

    @staticmethod
    def graph_3d(key_added: str, part: str) -> str:
        """``.obsp`` name of one part (``'overlap'``, ``'similarity'``, ``'spatial'``) of a 3D spot graph.

        Written under ``key_added`` by ``st.pp.spot_graph_3d`` and ``st.tl.impute_3d``.
        """
        return f"{key_added}_{part}"

    @staticmethod
    def colors(key: str) -> str:
        """Return the ``.uns`` key that holds the palette of a categorical key (scanpy convention)."""
        return f"{key}_colors"

    @staticmethod
    def cells_table(spot_table: str) -> str:
        """Name of the table of placed cells made from a spot table (default ``key_added``)."""
        return Key.table.cells(spot_table)

    @staticmethod
    def gene_maps(image: str) -> str:
        """Name of the image element of per-pixel gene maps made from an H&E image."""
        return f"{image}_gene_maps"

    @staticmethod
    def tissue(image: str) -> str:
        """Name of the labels element of the tissue mask of an H&E image (``st.pp.detect_tissue``)."""
        return f"{image}_tissue"

    @staticmethod
    def gene_map_keys(image: str, key_added: str | None = None) -> GeneMapKeys:
        """All names written by one ``st.tl.gene_maps`` run on ``image`` with this ``key_added``."""
        element = Key.gene_maps(image) if key_added is None else key_added
        key = Key.default.gene_maps if key_added is None else key_added
        return GeneMapKeys(element=element, reconstruction=f"{element}_reconstruction", key=key, train=f"{key}_train")
