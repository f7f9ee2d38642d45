"""Tools: one thin module per capability (validate -> prepare -> compute -> write)."""

from ._ctr import CTRModel, detect_ctr, train_ctr
from ._density import GridSpec, density
from ._gene_maps import GeneMapModel, disc_means, gene_maps, predict_maps, prior_raster, train_gene_maps
from ._impute3d import Impute3DModel, asign_target, impute_3d, train_impute_3d
from ._mapping import map_cells, project_genes
from ._rank import density_scores, rank_densities

__all__ = [
    "map_cells",
    "project_genes",
    "train_ctr",
    "detect_ctr",
    "CTRModel",
    "density",
    "GridSpec",
    "rank_densities",
    "density_scores",
    "train_gene_maps",
    "gene_maps",
    "GeneMapModel",
    "predict_maps",
    "prior_raster",
    "disc_means",
    "train_impute_3d",
    "impute_3d",
    "Impute3DModel",
    "asign_target",
]
