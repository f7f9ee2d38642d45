"""Gene maps on histology: per-pixel expression predicted on the H&E, written as an image element.

A fully convolutional network (:class:`stmap.models._genemap.GeneMapNet`) learns to reconstruct the H&E (SSIM
loss) and, in extra output channels, one map per gene whose average over each spot's disc matches the spot's
measured (log-normalised, per-gene standardised) expression. Training runs on tiles of a working resolution
chosen from the spot size; inference streams the whole (lazy, possibly multiscale) image through
:func:`dask.array.map_overlap` with a halo wider than the network's receptive field, so a tiled pass equals a
whole-image pass.

Fit and apply apart, as :func:`~stmap.tl.train_ctr` / :func:`~stmap.tl.detect_ctr`: :func:`train_gene_maps`
returns a :class:`GeneMapModel`; :func:`gene_maps` applies one (or trains one first). The steps, one file each:

- ``_prepare``: the table and its H&E, the working image, spot discs, targets (``_genes``: which genes);
- ``_features`` / ``_priors``: the histology feature grid and the prior rasters (inverse distance, ridge);
- ``_train``: tiles around the spots and the network fit; ``_model``: the model and its file;
- ``_infer``: the network over the whole image in overlapping tiles, spot averages;
- ``_write``: the image element, ``obsm``, ``obs`` and ``uns`` in one commit.
"""

from ._infer import disc_means, predict_maps
from ._model import GeneMapModel
from ._priors import prior_raster
from ._tool import gene_maps, train_gene_maps

__all__ = ["gene_maps", "train_gene_maps", "GeneMapModel", "predict_maps", "prior_raster", "disc_means"]
