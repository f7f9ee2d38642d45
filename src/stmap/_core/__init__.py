"""Internal core: the only code that knows SpatialData/AnnData layouts.

Tools follow one path: :func:`resolve` (validate, nothing touched) -> prepare -> compute -> :class:`Results` ->
:meth:`Results.commit`.
"""

from ._constants import Key
from ._device import resolve_device, resolve_verbose, rng, seed_everything, torch_threads
from ._docs import d, inject_docs
from ._elements import affine_matrix, make_circles, make_image, make_points, make_table, new_spatialdata
from ._errors import StmapInputError, StmapKeyError, unknown_key
from ._genes import log_normalize
from ._params import Instance, Interval, Options, check_param, invalid_values, validate_params
from ._patches import PatchSpec, extract_patches, patch_spec
from ._points import PointsContext, grid_transformation, image_grid, resolve_points
from ._resolve import ImageContext, TableContext, is_spatialdata, resolve, resolve_image, transform_points
from ._settings import settings
from ._validate import check_counts, get_counts, shared_genes
from ._write import Results, sanitize_params
