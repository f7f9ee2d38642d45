"""Cancer tissue region (CTR) detection fusing histology and expression (SpaCRD), trained on labelled sources.

Steps, one file each: ``_features`` (per-sample scaling rules, neighbour tokens, labels), ``_model`` (the
:class:`CTRModel` that carries them), ``_train`` (:func:`train_ctr`), ``_threshold`` (calling CTR from the scores) and
``_detect`` (:func:`detect_ctr`).
"""

from ._detect import detect_ctr
from ._model import CTRModel
from ._train import train_ctr

__all__ = ["train_ctr", "detect_ctr", "CTRModel"]
