"""Writing: the maps as an image element over the H&E, spot averages in ``obsm``, the run's record in ``uns``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from stmap._core import Results, make_image

if TYPE_CHECKING:
    from stmap._core._constants import GeneMapKeys

    from ._infer import Maps
    from ._model import GeneMapModel
    from ._prepare import Section

#: Training parameters recorded in ``.uns[key]['params']``, in order, after the preparation ones.
_TRAINING = ("epochs", "warmup_epochs", "spot_weight", "batch_size", "width", "depth", "lr")


def run_params(sec: Section, model: GeneMapModel, *, layer: str | None, device: Any, dtype: str) -> dict[str, Any]:
    """The parameters of the run: the model's training parameters and this section's working resolution."""
    tp = model.params
    return {
        "genes": tp.get("genes", list(sec.genes)),
        "groupby": tp.get("groupby"),
        "image_key": sec.img.name,
        "layer": layer,
        "normalize": model.normalize,
        "scale": sec.px,
        "level": sec.level,
        "coarsen": sec.k,
        "tile_px": sec.tile,
        **{k: tp.get(k) for k in _TRAINING},
        "prior": model.prior,
        "seed": tp.get("seed"),
        "device": str(device),
        "dtype": dtype,
    }


def _pearson(sec: Section, spots: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-gene Pearson of the targets and the maps' spot averages over the spots of ``mask`` on the image."""
    from stmap.metrics import pearson_per_gene

    mask = mask & sec.inside
    if mask.sum() < 3:
        return np.full(len(sec.genes), np.nan)
    return np.asarray([float(v) for v in pearson_per_gene(sec.Y[mask], spots[mask])], dtype=float)


def write(
    sec: Section, model: GeneMapModel, maps: Maps, keys: GeneMapKeys, params: dict[str, Any], copy: bool
) -> tuple[Any, str]:
    """Queue every write and commit them together; returns the commit's result and what was written (for the log)."""
    res = Results(sec.ctx, keys.key, params)
    cs = sec.img.coordinate_system
    image = make_image(maps.genes, transform=sec.T, coordinate_system=cs, c_coords=sec.genes, chunks=(1, 512, 512))
    res.element(keys.element, image)
    if maps.reconstruction is not None:
        rgb = ["r", "g", "b"]
        rec = make_image(maps.reconstruction, transform=sec.T, coordinate_system=cs, c_coords=rgb, chunks=(3, 512, 512))
        res.element(keys.reconstruction, rec)
    res.obsm(keys.key, pd.DataFrame(maps.spots, index=sec.ctx.adata.obs_names, columns=sec.genes))
    res.obs(keys.train, sec.train & sec.inside)
    record = {
        "genes": sec.genes,
        "element": keys.element,
        "mean": np.asarray(model.mean, dtype=float),
        "std": np.asarray(model.std, dtype=float),
        "loss": np.asarray(model.history, dtype=float),
        "pixel_size": sec.px,
        "spot_pearson_train": _pearson(sec, maps.spots, sec.train),
        "spot_pearson_heldout": _pearson(sec, maps.spots, ~sec.train),
    }
    res.uns(keys.key, record)
    return res.commit(copy), res.written
