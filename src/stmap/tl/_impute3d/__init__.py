"""3D imputation of expression across serial sections (ASIGN): graph label propagation + histology graph attention.

Fit and apply apart, as :func:`~stmap.tl.train_ctr` / :func:`~stmap.tl.detect_ctr`: :func:`train_impute_3d`
returns an :class:`Impute3DModel`; :func:`impute_3d` applies one (or trains one first). The steps, one file each:

- ``_prepare``: the stacked table read and checked (sections, measured spots, counts -> target, positions);
  ``_features``: histology features read or computed, split into patch-scale blocks;
- ``_graph``: the 3D spot graph and its edges; ``_propagate``: label propagation; ``_prior``: the ridge prior;
  ``_arrays``: what training and prediction share (standardised features, target, tensors);
- ``_train``: the network fit; ``_model``: the model and its file; ``_config``: its graph and training parameters;
- ``_predict``: the mixed prediction; ``_write``: the results in one commit; ``_tool``: the public tools.
"""

from ._model import Impute3DModel
from ._prepare import asign_target
from ._tool import impute_3d, train_impute_3d

__all__ = ["impute_3d", "train_impute_3d", "Impute3DModel", "asign_target"]
