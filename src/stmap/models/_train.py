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

from stmap._core._device import resolve_verbose, torch_threads
from stmap._core._params import Instance, Interval, validate_params

__all__ = ["fit", "FitHistory", "save_checkpoint", "load_checkpoint"]


@dataclass
class FitHistory:
    """What :func:`~stmap.models.fit` did.

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

    See Also
    --------
    :func:`stmap.models.fit`
        Returns it.

    Examples
    --------
    >>> import torch
    >>> from stmap import models
    >>> x = torch.linspace(-1, 1, 64)[:, None]
    >>> def step(model, idx, epoch):
    ...     return torch.nn.functional.mse_loss(model(x[idx]), 3 * x[idx] + 1)
    >>> history = models.fit(torch.nn.Linear(1, 1), step, 64, epochs=500, lr=0.05, patience=5, verbose=False)
    >>> history.stopped_early, history.best_epoch < len(history.loss) - 1
    (True, True)
    """

    loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False


@validate_params(
    epochs=Interval(int, 0, None),
    batch_size=Interval(int, 1, None),
    lr=Interval(float, 0, None, "neither"),
    weight_decay=Interval(float, 0, None),
    seed=[Interval(int, 0, None), None],
    patience=[Interval(int, 1, None), None],
    min_delta=Interval(float, 0, None),
    shuffle=Instance((bool,)),
    drop_last=Instance((bool,)),
    verbose=[Instance((bool,)), None],
    desc=Instance((str,)),
)
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
    device: Any = None,
    patience: int | None = None,
    min_delta: float = 0.0,
    val_step: Callable[[Any], float] | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
    verbose: bool | None = None,
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
    epochs
        Number of passes over the samples (0 returns the history unchanged).
    batch_size
        Samples per mini-batch.
    lr
        Learning rate of Adam.
    weight_decay
        Weight decay (L2 penalty) of Adam.
    optimizer
        A :class:`torch.optim.Optimizer` over the model's parameters that replaces Adam (``lr`` and
        ``weight_decay`` are then not used).
    seed
        Seeds torch and the batch order: the same seed gives the same weights on CPU.
    device
        Torch device; ``None`` uses :attr:`stmap.settings.device`.
    patience
        Stop when the monitored loss (``val_step`` if given, else the training loss) has not improved by more than
        ``min_delta`` for this many epochs, and restore the best weights. ``None`` trains all epochs.
    min_delta
        Smallest improvement counted.
    val_step
        ``val_step(model) -> float`` evaluated (without gradients, in eval mode) after each epoch.
    shuffle
        Draw the samples of each epoch in a new random order (seeded by ``seed``); ``False`` keeps ``0..n-1``.
    drop_last
        Drop an incomplete last batch (useful for contrastive losses, which need full batches).
    verbose
        tqdm progress bar over epochs; ``None`` uses :attr:`stmap.settings.verbose`.
    desc
        Progress bar label.
    history
        Continue this history (several phases of one training).

    Returns
    -------
    The :class:`FitHistory`.

    See Also
    --------
    :class:`stmap.models.FitHistory`
        What this returns.
    :func:`stmap.models.save_checkpoint`
        Saves the trained model.

    Examples
    --------
    Fit ``y = 3 x + 1`` with a linear layer; the step function computes the loss of a batch of sample indices:

    >>> import torch
    >>> from stmap import models
    >>> x = torch.linspace(-1, 1, 64)[:, None]
    >>> y = 3 * x + 1
    >>> def step(model, idx, epoch):
    ...     return torch.nn.functional.mse_loss(model(x[idx]), y[idx])
    >>> net = torch.nn.Linear(1, 1)
    >>> history = models.fit(net, step, n_samples=64, epochs=200, batch_size=16, lr=0.05, verbose=False)
    >>> len(history.loss), round(net.weight.item(), 3), round(net.bias.item(), 3)
    (200, 3.0, 1.0)
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
    loop = _Loop(model, step, opt, n_samples, batch_size, shuffle, drop_last, g)
    best, best_state, wait = math.inf, None, 0
    with torch_threads():
        bar = tqdm(range(epochs), desc=desc, disable=not resolve_verbose(verbose), leave=False)
        for epoch in bar:
            hist.loss.append(loop.epoch(epoch))
            monitored = hist.loss[-1]
            if val_step is not None:
                model.eval()
                with torch.no_grad():
                    monitored = float(val_step(model))
                hist.val_loss.append(monitored)
            bar.set_postfix(loss=f"{monitored:.4f}")
            if patience is None:
                hist.best_epoch = len(hist.loss) - 1
                continue
            if monitored < best - min_delta:
                best, wait, hist.best_epoch = monitored, 0, len(hist.loss) - 1
                best_state = copy.deepcopy(model.state_dict())
            else:
                wait += 1
                if wait >= patience:
                    hist.stopped_early = True
                    break
    if patience is not None and best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return hist


@dataclass
class _Loop:
    """One epoch of mini-batch training: the batch order, the steps and the epoch's mean loss."""

    model: Any
    step: Callable[[Any, Any, int], Any]
    opt: Any
    n_samples: int
    batch_size: int
    shuffle: bool
    drop_last: bool
    generator: Any

    def epoch(self, epoch: int) -> float:
        """Train one epoch; the sample-weighted mean loss of its batches."""
        import torch

        self.model.train()
        n, bs = self.n_samples, self.batch_size
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        n_full = n // bs
        stop = n_full * bs if self.drop_last and n_full > 0 else n
        total, count = 0.0, 0
        for s in range(0, stop, bs):
            idx = order[s : min(s + bs, stop)]
            loss = self.step(self.model, idx, epoch)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        return total / max(count, 1)


def save_checkpoint(
    path: str | Path,
    model: Any,
    *,
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
    kind: str | None = None,
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
    kind
        Name of the model class whose ``load`` reads the file (e.g. ``'CTRModel'``); recorded so that
        :func:`load_checkpoint` can tell a file of another model class.

    Returns
    -------
    The path written.

    See Also
    --------
    :func:`stmap.models.load_checkpoint`
        Rebuilds the model from the file.

    Examples
    --------
    >>> import torch
    >>> from stmap import models
    >>> net = torch.nn.Linear(2, 1)
    >>> path = models.save_checkpoint(
    ...     "line.pt", net, config={"in_features": 2, "out_features": 1}, extra={"genes": ["a", "b"]}
    ... )
    >>> path.name
    'line.pt'
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in (extra or {}).items()}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt = {"format": _FORMAT, "config": config, "state_dict": state, "extra": extra}
    if kind is not None:
        ckpt["kind"] = kind
    torch.save(ckpt, path)
    return path


_FORMAT = "stmap-model/1"


def _short(err: BaseException) -> str:
    msg = str(err).strip().splitlines()
    return f"{type(err).__name__}: {msg[0][:160]}" if msg else type(err).__name__


def load_checkpoint(
    path: str | Path,
    cls: Any,
    *,
    device: Any = None,
    kind: str | None = None,
    required: tuple[str, ...] = (),
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Load a model saved with :func:`~stmap.models.save_checkpoint`.

    Every way a file can be something else is a :class:`~stmap.StmapInputError` ``"<path> is not a stmap <kind>
    file (saved by <kind>.save): <why>"``, raised before a model is built: not a torch file (random bytes, text),
    a torch file without stmap's model record, a file of another model class (recorded ``kind``, or for files
    written before it was recorded: a configuration, weights or ``extra`` record that does not fit ``cls``).

    Parameters
    ----------
    path
        The file.
    cls
        The module class; rebuilt as ``cls(**config)``.
    device
        Torch device the model is moved to; ``None`` uses :attr:`stmap.settings.device`.
    kind
        Name of the model class the file must hold (as given to :func:`save_checkpoint`); used in the messages.
    required
        Keys the file's ``extra`` record must have.

    Returns
    -------
    ``(model, config, extra)``; the model is in eval mode.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    StmapInputError
        The file is not a model of this kind saved by stmap.

    See Also
    --------
    :func:`stmap.models.save_checkpoint`
        Writes the file.

    Examples
    --------
    >>> import torch
    >>> from stmap import models
    >>> net = torch.nn.Linear(2, 1)
    >>> path = models.save_checkpoint(
    ...     "line.pt", net, config={"in_features": 2, "out_features": 1}, extra={"genes": ["a", "b"]}
    ... )
    >>> loaded, config, extra = models.load_checkpoint(path, torch.nn.Linear)
    >>> config, extra, torch.equal(loaded.weight, net.weight)
    ({'in_features': 2, 'out_features': 1}, {'genes': ['a', 'b']}, True)
    """
    import torch

    from stmap._core._device import resolve_device
    from stmap._core._errors import StmapInputError

    path = Path(path)
    what = kind or "model"
    if not path.is_file():
        hint = "a folder" if path.is_dir() else "no such file"
        raise FileNotFoundError(f"No saved model at {str(path)!r} ({hint}); save one with {kind or 'the model'}.save.")

    def _not_ours(why: str) -> StmapInputError:
        by = f"{kind}.save" if kind else "save_checkpoint"
        return StmapInputError(f"{str(path)!r} is not a stmap {what} file (saved by {by}): {why}")

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any reader error means: not a torch file we can read safely
        raise _not_ours(f"torch cannot read it as a weights file ({_short(err)}).") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != _FORMAT:
        got = f"keys {sorted(map(str, ckpt))[:6]}" if isinstance(ckpt, dict) else f"a {type(ckpt).__name__}"
        raise _not_ours(f"it is a torch file but not a model saved by stmap (it holds {got}).")
    other = ckpt.get("kind")
    if kind is not None and other is not None and other != kind:
        raise _not_ours(f"it holds a {other}; load it with st.tl.{other}.load.")
    config, state, extra = ckpt.get("config"), ckpt.get("state_dict"), ckpt.get("extra")
    if not (isinstance(config, dict) and isinstance(state, dict) and isinstance(extra, dict)):
        raise _not_ours("its model record is incomplete (config, state_dict and extra are needed).")
    missing = [k for k in required if k not in extra]
    if missing:
        raise _not_ours(f"its record lacks {missing} (a file of another stmap model class?).")
    try:
        model = cls(**config)
    except Exception as err:  # a configuration for another architecture
        raise _not_ours(f"its configuration does not build the {cls.__name__} network ({_short(err)}).") from err
    try:
        model.load_state_dict(state)
    except Exception as err:  # weights of another architecture
        raise _not_ours(f"its weights do not fit the {cls.__name__} network ({_short(err)}).") from err
    model.to(resolve_device(device)).eval()
    return model, config, extra
