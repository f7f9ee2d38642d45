"""stmap.models: the networks (torch modules on tensors) and one training loop for all of them.

:func:`fit` trains any :class:`torch.nn.Module` from a ``step(model, idx, epoch) -> loss`` function;
:func:`save_checkpoint` / :func:`load_checkpoint` store a module with what rebuilds it. Importing this module does not
import torch.
"""

from ._train import FitHistory, fit, load_checkpoint, save_checkpoint

__all__ = ["fit", "FitHistory", "save_checkpoint", "load_checkpoint"]
