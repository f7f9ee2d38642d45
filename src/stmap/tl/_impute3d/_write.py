"""Write the imputation into the stacked table, all at once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from stmap._core._constants import Key
from stmap._core._write import Results

from ._config import GraphParams
from ._model import Impute3DModel
from ._prepare import Inputs

if TYPE_CHECKING:
    from scipy import sparse

#: Above this many values (spots x every gene of the table) the imputed layer is a lazy dask array, computed block by
#: block (on reading, plotting or writing to zarr) from the imputed genes: NaN in every other column.
DENSE_LAYER_MAX = 250_000_000


def imputed_layer(pred: np.ndarray, gidx: np.ndarray, n_vars: int) -> Any:
    """``(spots, n_vars)`` float32: ``pred`` in the columns ``gidx``, NaN elsewhere (dask above ``DENSE_LAYER_MAX``)."""
    n = len(pred)
    if n * n_vars <= DENSE_LAYER_MAX:
        full = np.full((n, n_vars), np.nan, dtype=np.float32)
        full[:, gidx] = pred
        return full
    import dask.array as da

    values = np.asarray(pred, dtype=np.float32)
    rows = max(1, 2**24 // max(n_vars, 1))

    def block(block_info: Any = None) -> np.ndarray:
        (r0, r1), _ = block_info[None]["array-location"]
        out = np.full((r1 - r0, n_vars), np.nan, dtype=np.float32)
        out[:, gidx] = values[r0:r1]
        return out

    chunks = (tuple(min(rows, n - a) for a in range(0, n, rows)), (n_vars,))
    return da.map_blocks(block, dtype=np.float32, chunks=chunks)


def run_params(inp: Inputs, model: Impute3DModel, gp: GraphParams, *, features_key: str | None, **more: Any) -> dict:
    """``uns[key_added]['params']``: the run's choices, the model's graph and training parameters."""
    trained = {k: model.params.get(k) for k in ("epochs", "hidden", "mask_fraction")}
    return {
        "measured": [n for n in inp.names if inp.measured[inp.codes == inp.names.index(n)].any()],
        "genes": len(inp.genes),
        "features_key": features_key if inp.levels is not None else None,
        "layer": inp.layer,
        "graph": list(gp.graph),
        "propagate": gp.propagate,
        **trained,
        "disc_scale": gp.disc_scale,
        "k_similar": gp.k_similar,
        "k_spatial": gp.k_spatial,
        "layers_apart": gp.layers_apart,
        "max_overlaps": gp.max_overlaps,
        "seed": model.params.get("seed"),
        **more,
        "features_computed": inp.computed is not None,
    }


def write(
    inp: Inputs,
    pred: np.ndarray,
    graphs: dict[str, sparse.csr_matrix],
    model: Impute3DModel,
    params: dict[str, Any],
    *,
    features_key: str | None,
    key_added: str,
    copy: bool,
) -> tuple[Any, str]:
    """Commit every result (``Results``: all or nothing); returns what ``commit`` returns and what was written."""
    import pandas as pd

    keys = Key.impute_3d(key_added)
    pred32 = np.asarray(pred, dtype=np.float32)
    res = Results(inp.ctx, key_added, params)
    res.layer(keys.layer, imputed_layer(pred32, inp.gidx, inp.adata.n_vars))
    res.obsm(keys.key, pd.DataFrame(pred32, index=inp.adata.obs_names, columns=inp.genes, copy=False))
    res.obs(keys.measured, inp.measured)
    if inp.computed is not None and features_key is not None:
        res.obsm(features_key, inp.computed[0])
        res.uns(features_key, inp.computed[1])
    for part, m in graphs.items():
        res.obsp(Key.graph_3d(key_added, part), m.tocsr())
    record = {
        "genes": inp.genes,
        "mixing_weights": model.mixing_weights(),
        "loss": np.asarray(model.history, dtype=float),
        "target": "ln((c + 1) / sum_genes(c + 1))",
        "histology": inp.levels is not None,
    }
    res.uns(keys.key, record)
    return res.commit(copy), res.written
