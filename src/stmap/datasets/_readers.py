"""Readers of small public data sets (placeholders until the readers land in this session)."""


def _todo(*args, **kwargs):
    raise NotImplementedError


bdtnp_atlas = cosmx_lung = spacexr = squidpy_visium = starmap_cells = visium_dentate_gyrus = vizgen_brain = _todo
