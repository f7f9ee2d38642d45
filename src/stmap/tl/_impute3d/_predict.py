"""Apply a trained model: propagate the measured expression, run the network, mix the sources."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._arrays import Problem, propagated, standardized, tensors
from ._config import GraphParams
from ._model import Impute3DModel


def predict_arrays(
    pb: Problem, model: Impute3DModel, gp: GraphParams, *, dev: Any, batch_size: int | None = None
) -> np.ndarray:
    """The prediction for every spot on the target scale (measured spots keep their own values).

    ``batch_size=None``: the whole graph at once, each source alone left in ``model.sources`` (diagnostics). Otherwise
    the unmeasured spots, ``2 * batch_size`` at a time with their graph neighbours (the same numbers to float32
    round-off, float32 output, ``model.sources`` left ``None``).
    """
    import torch

    lean = batch_size is not None
    T = tensors(pb, standardized(pb, model.mean, model.std, lean=lean), model.prior, gp.propagate, dev, batch_size)
    net = model.net.to(dev).eval()
    with torch.no_grad():
        p = propagated(T, pb.measured, gp)
        if batch_size is not None:
            from ._batch import predict

            unmeasured = np.flatnonzero(~pb.measured)  # measured spots keep their own values: not predicted
            pred = predict(net, T, p, 2 * batch_size, unmeasured, pb.key).cpu().numpy()  # no gradients kept
            model.sources = None
            pred *= model.std.astype(np.float32)
            pred += model.mean.astype(np.float32)
            pred[pb.measured] = pb.Y[pb.measured]
            return pred
        mixed, out, _ = net(T.feats, T.has, p, T.ei, T.ea, T.prior, T.avail)
    srcs = zip(("propagated", "prior", "network"), (p, T.prior, out))
    model.sources = {k: v.cpu().numpy().astype(np.float64) * model.std + model.mean for k, v in srcs}
    pred = mixed.cpu().numpy().astype(np.float64) * model.std + model.mean
    pred[pb.measured] = pb.Y[pb.measured]
    return pred
