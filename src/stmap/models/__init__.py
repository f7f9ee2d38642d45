"""stmap.models: the networks (torch modules on tensors) and one training loop for all of them.

:func:`fit` trains any :class:`torch.nn.Module` from a ``step(model, idx, epoch) -> loss`` function;
:func:`save_checkpoint` / :func:`load_checkpoint` store a module with what rebuilds it. The networks behind the tools
(:class:`GeneMapNet`, :class:`SpaCRDNet`, :class:`ASIGNNet`) and the Poisson composition fit are here too, for use on
plain tensors. Importing this module does not import torch: names are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "fit": "._train",
    "FitHistory": "._train",
    "save_checkpoint": "._train",
    "load_checkpoint": "._train",
    "GeneMapNet": "._genemap",
    "ssim_loss": "._genemap",
    "spot_means": "._genemap",
    "SpaCRDNet": "._spacrd",
    "spacrd_losses": "._spacrd",
    "ASIGNNet": "._asign",
    "impute_loss": "._asign",
    "PoissonDeconvolution": "._mapping",
    "fit_poisson_deconvolution": "._mapping",
    "split_counts": "._mapping",
}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
