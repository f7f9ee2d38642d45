"""Apply a trained model: propagate the measured expression, run the network, mix the sources."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._arrays import Problem, propagated, standardized, tensors
from ._config import GraphParams
from ._model import Impute3DModel


def predict_arrays(pb: Problem, model: Impute3DModel, gp: GraphParams, *, dev: Any) -> np.ndarray:
    """The prediction for every spot on the target scale (measured spots keep their own values).

    Each source alone is left in ``model.sources`` (diagnostics).
    """
    import torch

    T = tensors(pb, standardized(pb, model.mean, model.std), model.prior, gp.propagate, dev)
    net = model.net.to(dev).eval()
    with torch.no_grad():
        p = propagated(T, pb.measured, gp)
        mixed, out, _ = net(T.feats, T.has, p, T.ei, T.ea, T.prior, T.avail)
    srcs = zip(("propagated", "prior", "network"), (p, T.prior, out))
    model.sources = {k: v.cpu().numpy().astype(np.float64) * model.std + model.mean for k, v in srcs}
    pred = mixed.cpu().numpy().astype(np.float64) * model.std + model.mean
    pred[pb.measured] = pb.Y[pb.measured]
    return pred
