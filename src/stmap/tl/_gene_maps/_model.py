"""The trained gene-map network and what applying it needs: :class:`GeneMapModel` (save / load)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["GeneMapModel"]


def _floats(v: Any, dtype: Any = np.float64) -> np.ndarray | None:
    return None if v is None else np.asarray(v, dtype=dtype)


@dataclass
class GeneMapModel:
    """A trained gene-map network (a U-Net :cite:p:`ronneberger2015unet`) with what applying it to an image needs.

    Made by :func:`stmap.tl.train_gene_maps`; applied by :func:`stmap.tl.gene_maps` with ``model=``.

    Attributes
    ----------
    net
        The :class:`torch.nn.Module` (a ``GeneMapNet``).
    genes
        Gene names, in channel order.
    mean
        Per-gene mean of the targets (maps are ``net output * std + mean``).
    std
        Per-gene standard deviation of the targets.
    pixel_size
        Working pixel size in coordinate-system units of the training image.
    pixel_size_um
        Working pixel size in micrometres when known (``None`` if the coordinate unit is unknown), else see
        ``pixel_size``.
    normalize
        Whether targets were ``log1p`` of counts per 10^4 (the expression of a new table is read the same way).
    history
        Training loss per epoch.
    prior
        The priors the network was trained with (``'idw+histology'``, ``'idw'``, ``'histology'`` or ``None``).
    ridge_coef
        With a histology prior: the ridge regression weights ``(P, G)`` of the standardised targets on the
        standardised handcrafted features (:func:`stmap.pp.handcrafted_features`) of spot-sized patches.
    ridge_intercept
        With a histology prior: the ridge intercepts ``(G,)``.
    tile_px
        Training tile side in working pixels; the histology features of a new image are read on a grid over the
        spots' bounding box widened by half of it, as in training (``None`` for models saved before it was kept).
    params
        The training parameters (written to ``.uns[key]['params']`` by :func:`stmap.tl.gene_maps`).

    See Also
    --------
    :func:`stmap.tl.train_gene_maps`
        Makes it.
    :func:`stmap.tl.gene_maps`
        Applies it (``model=``).

    Examples
    --------
    >>> import stmap as st
    >>> sdata = st.datasets.synthetic_tissue(seed=0)
    >>> model = st.tl.train_gene_maps(
    ...     sdata,
    ...     table_key="spots",
    ...     genes=["tumor_m01", "T_cell_m01"],
    ...     prior="idw",
    ...     scale=5.0,
    ...     tile_px=32,
    ...     width=4,
    ...     depth=2,
    ...     epochs=2,
    ... )
    >>> model.save("gene_maps.pt").name
    'gene_maps.pt'
    >>> st.tl.GeneMapModel.load("gene_maps.pt").genes
    ['tumor_m01', 'T_cell_m01']
    """

    net: Any
    genes: list[str]
    mean: np.ndarray
    std: np.ndarray
    pixel_size: float
    pixel_size_um: float | None = None
    normalize: bool = True
    history: list[float] = field(default_factory=list)
    prior: str | None = None
    ridge_coef: np.ndarray | None = None
    ridge_intercept: np.ndarray | None = None
    tile_px: int | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        n = len(self.genes)
        return (
            f"GeneMapModel({n} genes, prior={self.prior!r}, pixel_size={self.pixel_size:.4g}, "
            f"{len(self.history)} epochs)"
        )

    def save(self, path: str | Path) -> Path:
        """Save weights, genes, scaling and the settings inference needs to a torch file.

        Parameters
        ----------
        path
            File to write (a torch ``.pt`` file).

        Returns
        -------
        The path written.
        """
        from stmap.models._train import save_checkpoint

        return save_checkpoint(
            path,
            self.net,
            config=self.net.config(),
            extra={
                "genes": list(self.genes),
                "mean": np.asarray(self.mean, dtype=float),
                "std": np.asarray(self.std, dtype=float),
                "pixel_size": float(self.pixel_size),
                "pixel_size_um": self.pixel_size_um,
                "normalize": bool(self.normalize),
                "history": list(self.history),
                "prior": self.prior,
                "ridge_coef": _floats(self.ridge_coef),
                "ridge_intercept": _floats(self.ridge_intercept),
                "tile_px": None if self.tile_px is None else int(self.tile_px),
                "params": dict(self.params),
            },
            kind="GeneMapModel",
        )

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None) -> GeneMapModel:
        """Load a model written by :meth:`save`.

        A file that is not a GeneMapModel saved by :meth:`save` (not a torch file, another kind of torch file, a
        file of another stmap model) raises :class:`~stmap.StmapInputError` naming it; a missing file
        :class:`FileNotFoundError`.

        Parameters
        ----------
        path
            The file.
        device
            Torch device the network is moved to; default :attr:`stmap.settings.device`.

        Returns
        -------
        The model.
        """
        from stmap.models._genemap import GeneMapNet
        from stmap.models._train import load_checkpoint

        required = ("genes", "mean", "std", "pixel_size")
        net, _, extra = load_checkpoint(path, GeneMapNet, device=device, kind="GeneMapModel", required=required)
        return cls(
            net=net,
            genes=list(extra["genes"]),
            mean=np.asarray(extra["mean"], dtype=np.float32),
            std=np.asarray(extra["std"], dtype=np.float32),
            pixel_size=float(extra["pixel_size"]),
            pixel_size_um=extra.get("pixel_size_um"),
            normalize=bool(extra.get("normalize", True)),
            history=list(extra.get("history", [])),
            prior=extra.get("prior"),
            ridge_coef=_floats(extra.get("ridge_coef")),
            ridge_intercept=_floats(extra.get("ridge_intercept")),
            tile_px=None if extra.get("tile_px") is None else int(extra["tile_px"]),
            params=dict(extra.get("params") or {}),
        )
