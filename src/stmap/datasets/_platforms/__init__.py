"""Synthetic raw platform output folders (Visium, Visium HD, Xenium) with a known answer.

Each writer builds a tissue with :func:`~stmap.datasets.synthetic_tissue` (cells with types, counts and positions in
micrometres, an H&E-like image and tissue regions) and writes it as the files that 10x Genomics' pipelines produce,
in the layout that the ``spatialdata_io`` readers read:

* :func:`synthetic_visium`: a Space Ranger Visium ``outs/`` folder, read by ``spatialdata_io.visium``;
* :func:`synthetic_visium_hd`: a Space Ranger Visium HD ``outs/`` folder, read by ``spatialdata_io.visium_hd``;
* :func:`synthetic_xenium`: a Xenium Onboard Analysis output folder, read by ``spatialdata_io.xenium``.

The known answer is written beside the platform files, as ``stmap_truth.h5ad`` (an :class:`anndata.AnnData` that
no reader looks at). Only ``h5py``, ``pyarrow``, ``tifffile``, ``zarr`` and ``Pillow`` are used to write: importing
these writers does not import ``spatialdata_io``.

Each writer is one file, named for its platform, whose public function validates the parameters and hands a
``write_*`` function the steps: build the tissue, place spots/bins/cells, write each file, write the truth.
"""

from ._common import TRUTH_FILE
from ._visium import synthetic_visium
from ._visium_hd import synthetic_visium_hd
from ._xenium import synthetic_xenium

__all__ = ["TRUTH_FILE", "synthetic_visium", "synthetic_visium_hd", "synthetic_xenium"]
