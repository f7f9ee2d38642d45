"""The trained model of 3D imputation and its file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Impute3DModel"]


@dataclass
class Impute3DModel:
    """A trained 3D imputation model (ASIGN :cite:p:`zhu2024asign`): the network, genes and scaling it was trained with.

    Made by :func:`stmap.tl.train_impute_3d` (or :func:`stmap.tl.impute_3d` without ``model=``), applied by
    :func:`stmap.tl.impute_3d` with ``model=``.

    Attributes
    ----------
    net
        The network, a :class:`~stmap.models.ASIGNNet`.
    genes
        Genes it predicts (columns of its output).
    mean
        Per-gene mean of the target over the measured spots (standardisation).
    std
        Per-gene standard deviation of the target over the measured spots (standardisation).
    config
        Architecture (rebuilds ``net``).
    params
        Training parameters, the graph's included (applying the model builds the same graph).
    history
        Training loss per epoch.
    prior
        The linear histology prior (ridge ``coef`` ``(features, genes)``, ``intercept``, ``alpha``), or ``None``.
    sources
        Diagnostics of the last imputation (not saved): each source alone (``'propagated'``, ``'prior'``,
        ``'network'``), ``(n_spots, n_genes)`` on the target scale.

    See Also
    --------
    :func:`stmap.tl.train_impute_3d`
        Makes it.
    :func:`stmap.tl.impute_3d`
        Applies it (``model=``).

    Examples
    --------
    >>> import stmap as st
    >>> sections = st.datasets.simulate_stack(3, n_genes=20, grid=8, seed=0)  # three serial sections
    >>> stack = st.pp.stack_sections(sections, transforms="warped")
    >>> model = st.tl.train_impute_3d(stack, measured=["S1"], genes=10, features_key=None, epochs=2)
    >>> model.save("impute3d.pt").name
    'impute3d.pt'
    >>> st.tl.Impute3DModel.load("impute3d.pt").genes == model.genes
    True
    """

    net: Any
    genes: list[str]
    mean: np.ndarray
    std: np.ndarray
    config: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)
    history: list[float] = field(default_factory=list)
    prior: dict[str, Any] | None = None
    sources: dict[str, np.ndarray] | None = None

    def mixing_weights(self) -> np.ndarray:
        """``(3, n_genes)`` per-gene weights of the propagated expression, the histology prior and the network."""
        return self.net.mixing_weights().cpu().numpy().astype(np.float64)

    def save(self, path: str | Path) -> Path:
        """Save to a torch file (weights, config, genes, scaling, prior, training parameters).

        Parameters
        ----------
        path
            The file to write.

        Returns
        -------
        The path written.
        """
        from stmap.models._train import save_checkpoint

        extra = {"genes": list(self.genes), "mean": self.mean, "std": self.std, "params": self.params}
        extra["history"] = list(self.history)
        extra["prior"] = None if self.prior is None else {k: np.asarray(v).tolist() for k, v in self.prior.items()}
        return save_checkpoint(path, self.net, config=self.config, extra=extra, kind="Impute3DModel")

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None) -> Impute3DModel:
        """Load a model written by :meth:`stmap.tl.Impute3DModel.save`.

        A file that is not an Impute3DModel saved by :meth:`save` (not a torch file, another kind of torch file, a
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
        from stmap.models._asign import ASIGNNet
        from stmap.models._train import load_checkpoint

        net, config, extra = load_checkpoint(
            path, ASIGNNet, device=device, kind="Impute3DModel", required=("genes", "mean", "std")
        )
        return cls(
            net=net,
            genes=list(extra["genes"]),
            mean=np.asarray(extra["mean"], dtype=np.float64),
            std=np.asarray(extra["std"], dtype=np.float64),
            config=config,
            params=dict(extra.get("params", {})),
            history=list(extra.get("history", [])),
            prior=None if extra.get("prior") is None else {k: np.asarray(v) for k, v in extra["prior"].items()},
        )
