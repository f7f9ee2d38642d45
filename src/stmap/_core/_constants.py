"""Key names used by every tool, in one place (the squidpy ``Key`` idea)."""

from __future__ import annotations

__all__ = ["Key"]


class Key:
    """Default names of the keys that stmap reads and writes."""

    class obsm:
        """Keys in ``.obsm``."""

        spatial = "spatial"
        spatial_warped = "spatial_warped"
        spatial_3d = "spatial_3d"
        histology = "X_histology"
        cell_type_fractions = "stmap_cell_type_fractions"
        cell_type_counts = "stmap_cell_type_counts"
        mapping = "stmap_mapping"

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

    class uns:
        """Keys in ``.uns``."""

        spatial = "spatial"
        spatialdata_attrs = "spatialdata_attrs"
        params = "params"
        stmap = "stmap"
        #: On tables that a tool made (e.g. placed cells): ``{"tool": key_added, "table": source table}``.
        derived = "stmap_derived"

    class layers:
        """Keys in ``.layers``."""

        counts = "counts"
        imputed = "imputed"

    #: SpatialData attribute holding the physical unit of each coordinate system, e.g. ``{"global": "um"}``.
    units_attr = "stmap_coordinate_units"
    #: Default coordinate system name.
    cs = "global"

    @staticmethod
    def colors(key: str) -> str:
        """Return the ``.uns`` key that holds the palette of a categorical key (scanpy convention)."""
        return f"{key}_colors"

    @staticmethod
    def cells_table(spot_table: str) -> str:
        """Name of the table of placed cells made from a spot table."""
        return f"{spot_table}_cells"

    @staticmethod
    def gene_maps(image: str) -> str:
        """Name of the image element of per-pixel gene maps made from an H&E image."""
        return f"{image}_gene_maps"
