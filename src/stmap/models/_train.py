"""One training loop for every stmap model: device, seeding, mini-batches, tqdm, early stopping, save/load.

Knows tensors, not SpatialData. A model is trained by giving :func:`fit` a ``step(model, idx, epoch) -> loss``
function that computes the loss of the mini-batch of sample indices ``idx``; data stay wherever the caller keeps them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["fit", "FitHistory", "save_checkpoint", "load_checkpoint"]


@dataclass
class FitHistory:
    """What :func:`fit` did.

    Attributes
    ----------
    loss
        Mean training loss per epoch.
    val_loss
        Validation loss per epoch (empty without ``val_step``).
    best_epoch
        Epoch whose weights were kept (last epoch without early stopping).
    stopped_early
        Whether training stopped before ``epochs``.
    """

    loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False


def fit(
    model: Any,
    step: Callable[[Any, Any, int], Any],
    n_samples: int,
    *,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    optimizer: Any = None,
    seed: int | None = 0,
    device: Any = "cpu",
    patience: int | None = None,
    min_delta: float = 0.0,
    val_step: Callable[[Any], float] | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
    verbose: bool = False,
    desc: str = "training",
    history: FitHistory | None = None,
) -> FitHistory:
    """Train ``model`` with Adam on mini-batches of sample indices.

    Parameters
    ----------
    model
        A :class:`torch.nn.Module`; moved to ``device`` and left in eval mode afterwards.
    step
        ``step(model, idx, epoch) -> loss`` (a scalar tensor) for the batch of sample indices ``idx`` (a
        :class:`torch.LongTensor` on CPU).
    n_samples
        Number of training samples; batches are drawn from ``range(n_samples)``.
    epochs, batch_size, lr, weight_decay
        Schedule; ``optimizer`` (a :class:`torch.optim.Optimizer` over the model's parameters) replaces Adam.
    seed
        Seeds torch and the batch order: the same seed gives the same weights on CPU.
    device
        Torch device.
    patience
        Stop when the monitored loss (``val_step`` if given, else the training loss) has not improved by more than
        ``min_delta`` for this many epochs, and restore the best weights. ``None`` trains all epochs.
    min_delta
        Smallest improvement counted.
    val_step
        ``val_step(model) -> float`` evaluated (without gradients, in eval mode) after each epoch.
    shuffle, drop_last
        Batch order and whether an incomplete last batch is dropped (useful for contrastive losses).
    verbose
        tqdm progress bar over epochs.
    desc
        Progress bar label.
    history
        Continue this history (several phases of one training).

    Returns
    -------
    The :class:`FitHistory`.
    """
    import torch
    from tqdm.auto import tqdm

    from stmap._core._device import resolve_device

    if n_samples < 1:
        raise ValueError("Nothing to train on: n_samples must be >= 1.")
    dev = resolve_device(device)
    model.to(dev)
    hist = FitHistory() if history is None else history
    if epochs <= 0:
        return hist
    if seed is not None:
        torch.manual_seed(int(seed))
    g = torch.Generator().manual_seed(0 if seed is None else int(seed))
    opt = optimizer or torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_state, wait = math.inf, None, 0
    n_batches_full = n_samples // batch_size
    bar = tqdm(range(epochs), desc=desc, disable=not verbose, leave=False)
    for epoch in bar:
        model.train()
        order = torch.randperm(n_samples, generator=g) if shuffle else torch.arange(n_samples)
        stop = n_batches_full * batch_size if drop_last and n_batches_full > 0 else n_samples
        total, count = 0.0, 0
        for s in range(0, stop, batch_size):
            idx = order[s : min(s + batch_size, stop)]
            loss = step(model, idx, epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        hist.loss.append(total / max(count, 1))
        monitored = hist.loss[-1]
        if val_step is not None:
            model.eval()
            with torch.no_grad():
                monitored = float(val_step(model))
            hist.val_loss.append(monitored)
        bar.set_postfix(loss=f"{monitored:.4f}")
        if patience is not None:
            if monitored < best - min_delta:
                best, wait, hist.best_epoch = monitored, 0, len(hist.loss) - 1
                best_state = copy.deepcopy(model.state_dict())
            else:
                wait += 1
                if wait >= patience:
                    hist.stopped_early = True
                    break
        else:
            hist.best_epoch = len(hist.loss) - 1
    if patience is not None and best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return hist


def save_checkpoint(
    path: str | Path, model: Any, *, config: dict[str, Any], extra: dict[str, Any] | None = None
) -> Path:
    """Save a model's weights with what is needed to rebuild it.

    Parameters
    ----------
    path
        File to write (a torch ``.pt`` file).
    model
        The :class:`torch.nn.Module`.
    config
        Keyword arguments that rebuild the architecture (``cls(**config)``).
    extra
        Anything else to keep (gene lists, scaling rules, thresholds): plain Python objects and numpy arrays.

    Returns
    -------
    The path written.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in (extra or {}).items()}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"format": "stmap-model/1", "config": config, "state_dict": state, "extra": extra}, path)
    return path


def load_checkpoint(path: str | Path, cls: Any, *, device: Any = "cpu") -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Load a model saved with :func:`save_checkpoint`.

    Parameters
    ----------
    path
        The file.
    cls
        The module class; rebuilt as ``cls(**config)``.
    device
        Torch device the model is moved to.

    Returns
    -------
    ``(model, config, extra)``; the model is in eval mode.
    """
    import torch

    from stmap._core._device import resolve_device

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No saved model at {str(path)!r}.")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != "stmap-model/1":
        raise ValueError(f"{str(path)!r} is not a model saved by stmap (save_checkpoint).")
    model = cls(**ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    model.to(resolve_device(device)).eval()
    return model, ckpt["config"], ckpt["extra"]
