"""detect_ctr at scale: batches encode only the spots they involve, with the same scores as the whole sample."""

from __future__ import annotations

import numpy as np
import pytest

import stmap as st
from stmap._core import resolve

torch = pytest.importorskip("torch")

TABLE = "spots"
FAST = {"pretrain_epochs": 2, "warmup_epochs": 2, "epochs": 5, "batch_size": 64, "verbose": False, "seed": 0}


@pytest.fixture(scope="module")
def sample():
    s = st.datasets.synthetic_tissue(0)
    st.pp.histology_features(s, table_key=TABLE, image_key="he")
    return s


def test_batched_predict_equals_whole_sample(sample):
    model = st.tl.train_ctr(sample, label_key="tumor", table_key=TABLE, **FAST)
    s = model._prepare(resolve(sample, TABLE), TABLE, None, require_features=True)
    # the reference: every spot encoded once, the whole sample as one batch (the network's own forward)
    g, f, has_g, has_i = model._inputs(s, "cpu")
    with torch.no_grad():
        out = model.net(g, f, torch.from_numpy(s.nbr), has_g, has_i)
    ref_p = torch.sigmoid(out["logit"]).numpy()
    ref_l = torch.cat([out["mu"], out["logvar"]], -1).numpy()
    for bs in (7, 50, 10_000):
        prob, lat = model._predict(s, "cpu", batch_size=bs)
        np.testing.assert_allclose(prob, ref_p, rtol=0, atol=1e-6)
        np.testing.assert_allclose(lat, ref_l, rtol=1e-5, atol=1e-5)
