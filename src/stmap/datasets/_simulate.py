"""Simulators (placeholders until they land in this session)."""


def _todo(*args, **kwargs):
    raise NotImplementedError


simulate_spots = simulate_tissue = synthetic_tissue = _todo
