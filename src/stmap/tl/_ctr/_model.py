"""The trained CTR detector: network, genes, feature key and the scaling rules that carry it to new samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stmap._core._errors import StmapInputError
from stmap._core._resolve import TableContext

from ._features import Sample, features, gene_block, lognorm, minmax, neighbours

__all__ = ["CTRModel"]


@dataclass
class CTRModel:
    """A trained SpaCRD :cite:p:`xue2026spacrd` cancer region detector; apply it with :func:`stmap.tl.detect_ctr`.

    It carries the network, the gene list, the histology feature key and size, and the scaling rules (per-sample
    min-max of log-normalised expression and of features, as published), so it transfers to new samples, platforms
    and batches. Save with :meth:`save`, reload with :meth:`load`.

    Attributes
    ----------
    net
        The trained :class:`torch.nn.Module`.
    genes
        Model genes, in input order.
    features_key
        ``obsm`` key of the histology features (``None`` for an expression-only model).
    n_features
        Histology feature size.
    modality
        ``'both'``, ``'expression'`` or ``'histology'``.
    n_neighbors
        Neighbour tokens per spot.
    config
        Network sizes.
    info
        Training record: label key, positive values, sources, loss history, training time.

    See Also
    --------
    :func:`stmap.tl.train_ctr`
        Makes it.
    :func:`stmap.tl.detect_ctr`
        Applies it.

    Examples
    --------
    >>> import stmap as st
    >>> sdata = st.datasets.synthetic_tissue(seed=0)
    >>> st.pp.histology_features(sdata, table_key="spots")
    >>> model = st.tl.train_ctr(
    ...     sdata, label_key="tumor", table_key="spots", n_genes=50, pretrain_epochs=1, warmup_epochs=1, epochs=2
    ... )
    >>> model.save("ctr.pt").name
    'ctr.pt'
    >>> st.tl.CTRModel.load("ctr.pt").genes == model.genes
    True
    """

    net: Any
    genes: list[str]
    features_key: str | None
    n_features: int
    modality: str
    n_neighbors: int
    config: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"CTRModel(modality={self.modality!r}, {len(self.genes)} genes, {self.n_features} histology features "
            f"({self.features_key!r}), {self.n_neighbors} neighbours)"
        )

    def save(self, path: str | Path) -> Path:
        """Save to a torch file (weights, gene list, feature key, scaling rules); reload with :meth:`load`.

        Parameters
        ----------
        path
            The file to write.

        Returns
        -------
        The path written.
        """
        from stmap.models._train import save_checkpoint

        extra = {
            "genes": list(self.genes),
            "features_key": self.features_key,
            "n_features": self.n_features,
            "modality": self.modality,
            "n_neighbors": self.n_neighbors,
            "scaling": "per-sample min-max of log1p(1e4-normalised) expression and of features",
            "info": {k: v for k, v in self.info.items() if isinstance(v, str | int | float | bool | list | dict)},
        }
        return save_checkpoint(path, self.net, config=self.config, extra=extra, kind="CTRModel")

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None) -> CTRModel:
        """Load a model written by :meth:`save`.

        Parameters
        ----------
        path
            The file.
        device
            Torch device; ``None`` uses :attr:`stmap.settings.device`.

        Returns
        -------
        The :class:`~stmap.tl.CTRModel`.

        Raises
        ------
        FileNotFoundError
            No file at ``path``.
        StmapInputError
            The file is not a CTRModel saved by :meth:`save` (not a torch file, another kind of torch file, a
            file of another stmap model).
        """
        from stmap.models._spacrd import SpaCRDNet
        from stmap.models._train import load_checkpoint

        net, config, extra = load_checkpoint(
            path,
            SpaCRDNet,
            device=device,
            kind="CTRModel",
            required=("genes", "features_key", "n_features", "modality", "n_neighbors"),
        )
        return cls(
            net=net,
            genes=list(extra["genes"]),
            features_key=extra["features_key"],
            n_features=int(extra["n_features"]),
            modality=extra["modality"],
            n_neighbors=int(extra["n_neighbors"]),
            config=config,
            info=dict(extra.get("info", {})),
        )

    @property
    def prevalence(self) -> float | None:
        """Cancer fraction of the labelled training spots (``None`` for a model saved without it)."""
        n_pos, n_lab = self.info.get("n_positive"), self.info.get("n_labelled")
        if n_pos is None or not n_lab:
            return None
        return float(n_pos) / float(n_lab)

    @property
    def uses_genes(self) -> bool:
        """Whether the model reads expression."""
        return self.modality in ("both", "expression")

    @property
    def uses_features(self) -> bool:
        """Whether the model reads histology features."""
        return self.modality in ("both", "histology")

    # internal ---------------------------------------------------------------------------------------------------------
    def _prepare(self, ctx: TableContext, name: str, layer: str | None, *, require_features: bool) -> Sample:
        """A sample prepared by the model's rules (its genes and feature key, per-sample scaling, neighbours)."""
        if self.uses_genes:
            X, var = lognorm(ctx, layer)
            genes, n_missing = gene_block(X, var, self.genes)
            if n_missing == len(self.genes):
                raise StmapInputError(
                    f"Table {ctx.table_key!r} ({name}) shares none of the model's {len(self.genes)} genes "
                    f"(e.g. {', '.join(self.genes[:5])}); check the gene naming (symbols vs ids)."
                )
        else:
            genes, n_missing = np.zeros((ctx.adata.n_obs, 0), dtype=np.float32), 0
        feats = self._features(ctx, name, require_features) if self.uses_features else None
        return Sample(name, ctx, genes, feats, neighbours(ctx.coords, self.n_neighbors), missing_genes=n_missing)

    def _features(self, ctx: TableContext, name: str, required: bool) -> np.ndarray | None:
        """The sample's histology features, min-max scaled; ``None`` when absent and not ``required``."""
        key = self.features_key
        if key is not None and key in ctx.adata.obsm:
            f = features(ctx, key)
            if f.shape[1] != self.n_features:
                raise StmapInputError(
                    f"obsm[{key!r}] of table {ctx.table_key!r} has {f.shape[1]} features, the model "
                    f"was trained on {self.n_features}; compute them with the same extractor and scales."
                )
            return minmax(f)
        if required:
            raise StmapInputError(
                f"Table {ctx.table_key!r} ({name}) has no obsm[{key!r}]; run "
                f"`st.pp.histology_features(sdata, key_added={key!r})` first."
            )
        return None

    def _inputs(self, s: Sample, device: Any) -> tuple[Any, Any, Any, Any]:
        import torch

        n = len(s.nbr)
        g = torch.from_numpy(s.genes).to(device) if self.uses_genes else None
        f = torch.from_numpy(s.feats).to(device) if (self.uses_features and s.feats is not None) else None
        has_g = torch.full((n,), self.uses_genes, dtype=torch.bool, device=device)
        has_i = torch.full((n,), f is not None, dtype=torch.bool, device=device)
        return g, f, has_g, has_i

    def _predict(self, s: Sample, device: Any, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Cancer probability and VAE posterior ``(mu, log var)`` of every spot of a prepared sample.

        Batches of ``batch_size`` spots; each batch encodes only the spots it involves (itself and its neighbours), so
        the time is linear in the number of spots.
        """
        import torch

        self.net.eval()
        g, f, has_g, has_i = self._inputs(s, device)
        n = len(s.nbr)
        prob = np.empty(n, dtype=np.float64)
        lat: np.ndarray | None = None
        with torch.no_grad():
            for st in range(0, n, batch_size):
                uniq, inv = np.unique(s.nbr[st : st + batch_size], return_inverse=True)
                u = torch.from_numpy(uniq).to(device)
                tok = torch.from_numpy(inv.reshape(-1, s.nbr.shape[1])).to(device)
                out = self.net(None if g is None else g[u], None if f is None else f[u], tok, has_g[u], has_i[u])
                prob[st : st + batch_size] = torch.sigmoid(out["logit"]).cpu().numpy()
                mu_lv = torch.cat([out["mu"], out["logvar"]], -1).cpu().numpy()
                if lat is None:
                    lat = np.empty((n, mu_lv.shape[1]), dtype=np.float32)
                lat[st : st + batch_size] = mu_lv
        return prob, lat if lat is not None else np.zeros((0, 0), dtype=np.float32)
