"""Align the sections: one 3x3 matrix per section, its coordinate system -> the aligned frame (micrometres)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..._core import StmapInputError, unknown_key
from ..._core._constants import Key
from ._sections import Section

Kind = Literal["translation", "rigid", "similarity", "affine"]

#: Transform family of each alignment method when ``kind=None``.
DEFAULT_KIND: dict[str, Kind] = {"warped": "affine", "landmarks": "similarity", "icp": "rigid"}


@dataclass
class Alignment:
    """Per section (in stacking order) the matrix to the aligned frame; how it was found and how well it fits."""

    mats: list[np.ndarray]
    method: str
    reference: str
    rmse: dict[str, float] = field(default_factory=dict)


def key_transforms(transforms: Any, secs: list[Section]) -> Any:
    """Matrices given as a list (in input order) keyed by section, so that they survive sorting by ``z``."""
    if transforms is None or isinstance(transforms, (str, Mapping)):
        return transforms
    transforms = list(transforms)
    if len(transforms) != len(secs):
        raise StmapInputError(f"`transforms` has {len(transforms)} matrices for {len(secs)} sections.")
    return {sec.name: m for sec, m in zip(secs, transforms)}


def _fit(src: np.ndarray, dst: np.ndarray, kind: Kind, what: str) -> tuple[np.ndarray, float]:
    from .._register import apply_transform, fit_transform

    ok = np.isfinite(src).all(1) & np.isfinite(dst).all(1)
    if ok.sum() < 3:
        raise StmapInputError(f"{what}: fewer than 3 spots/landmarks with finite coordinates; cannot fit a transform.")
    m = fit_transform(src[ok], dst[ok], kind=kind)
    rmse = float(np.sqrt(np.mean(((apply_transform(m, src[ok]) - dst[ok]) ** 2).sum(1))))
    return m, rmse


def _given(secs: list[Section], transforms: Any) -> list[np.ndarray]:
    names = [s.name for s in secs]
    if isinstance(transforms, Mapping):
        missing = [n for n in names if n not in transforms]
        if missing:
            raise StmapInputError(f"`transforms` has no matrix for sections {missing}.")
        mats = [np.asarray(transforms[n], dtype=float) for n in names]
    else:
        mats = [np.asarray(m, dtype=float) for m in transforms]
        if len(mats) != len(secs):
            raise StmapInputError(f"`transforms` has {len(mats)} matrices for {len(secs)} sections.")
    for n, m in zip(names, mats):
        if m.shape != (3, 3) or not np.isfinite(m).all() or abs(np.linalg.det(m[:2, :2])) < 1e-12:
            raise StmapInputError(f"The transform of section {n!r} must be an invertible 3x3 matrix, got {m}.")
    return mats


def _warped(secs: list[Section], r: int, kind: Kind, warped_key: str) -> tuple[list[np.ndarray], dict[str, float]]:
    """Fit each section's spots onto their registered coordinates, expressed in the reference's frame."""
    from .._register import apply_transform

    w = []
    for s in secs:
        if warped_key not in s.table.obsm:
            raise StmapInputError(
                f"Section {s.name!r} has no obsm[{warped_key!r}] (registered coordinates); pass `warped_key=`, or "
                "use transforms='icp' / 'landmarks' / given matrices."
            )
        w.append(np.asarray(s.table.obsm[warped_key], dtype=float)[:, :2])
    ref = secs[r]
    # the warped frame -> the reference's frame (um), fitted on the reference's own spots
    to_um, _ = _fit(w[r], ref.coords * ref.um, "similarity", f"Section {ref.name!r} ({warped_key})")
    mats, rmse = [], {}
    for s, ws in zip(secs, w):
        a, rm = _fit(s.coords * s.um, apply_transform(to_um, ws), kind, f"Section {s.name!r} ({warped_key})")
        mats.append(a @ np.diag([s.um, s.um, 1.0]))
        rmse[s.name] = rm
    return mats, rmse


def _landmarks_um(s: Section, landmarks: Any) -> np.ndarray:
    if isinstance(landmarks, str):
        from .._register import _coords_of

        c, _ = _coords_of(s.sdata, landmarks, s.coordinate_system, f"landmarks of {s.name!r}")
    elif isinstance(landmarks, Mapping) and s.name in landmarks:
        c = np.asarray(landmarks[s.name], dtype=float)
    else:
        raise StmapInputError(f"No landmarks for section {s.name!r}; give one (k, 2) array per section.")
    return c[:, :2] * s.um


def _landmarks(secs: list[Section], r: int, kind: Kind, landmarks: Any) -> tuple[list[np.ndarray], dict[str, float]]:
    """Fit each section's landmarks onto the reference's (corresponding rows)."""
    if landmarks is None:
        raise StmapInputError("transforms='landmarks' needs `landmarks=`: {section: (k, 2) array} or a points name.")
    lm = [_landmarks_um(s, landmarks) for s in secs]
    if len({len(c) for c in lm}) != 1:
        raise StmapInputError(f"Every section needs the same landmarks, in the same order; got {[len(c) for c in lm]}.")
    mats, rmse = [], {}
    for s, c in zip(secs, lm):
        a, rm = _fit(c, lm[r], kind, f"Landmarks of section {s.name!r}")
        mats.append(a @ np.diag([s.um, s.um, 1.0]))
        rmse[s.name] = rm
    return mats, rmse


def _icp(
    secs: list[Section], r: int, kind: Kind, icp_kwargs: dict[str, Any] | None
) -> tuple[list[np.ndarray], dict[str, float]]:
    """Each section onto its already aligned neighbour towards the reference (trimmed ICP)."""
    from .._register import apply_transform, icp

    pts = [s.coords * s.um for s in secs]  # um, each section's own frame
    al = {r: np.eye(3)}
    rmse = {secs[r].name: 0.0}
    order = [(i, i + 1) for i in range(r - 1, -1, -1)] + [(i, i - 1) for i in range(r + 1, len(secs))]
    for i, j in order:
        # spot lattices look alike at many rotations: try many starts (cheap for a few thousand spots)
        kw = {"n_starts": 72, "max_points": 5000} | dict(icp_kwargs or {})
        m, info = icp(pts[i], apply_transform(al[j], pts[j]), kind=kind, **kw)
        al[i] = m
        rmse[secs[i].name] = float(info["rmse"])
    return [al[i] @ np.diag([s.um, s.um, 1.0]) for i, s in enumerate(secs)], rmse


def alignments(
    secs: list[Section],
    transforms: Any,
    *,
    warped_key: str,
    reference: str | None,
    kind: Kind | None,
    landmarks: Any,
    icp_kwargs: dict[str, Any] | None,
) -> Alignment:
    """Per section, the 3x3 matrix section coordinate system -> aligned frame (um), by ``transforms``."""
    names = [s.name for s in secs]
    if transforms is None:  # already aligned: micrometres of each section's own frame
        return Alignment([np.diag([s.um, s.um, 1.0]) for s in secs], "none", names[0])
    if not isinstance(transforms, str):
        return Alignment(_given(secs, transforms), "given", names[0])
    if reference is None:
        reference = names[len(names) // 2] if transforms == "icp" else names[0]
    if reference not in names:
        raise unknown_key("Reference section", reference, names, "the sections")
    r, kind = names.index(reference), kind or DEFAULT_KIND[transforms]
    if transforms == "warped":
        mats, rmse = _warped(secs, r, kind, warped_key)
    elif transforms == "landmarks":
        mats, rmse = _landmarks(secs, r, kind, landmarks)
    else:
        mats, rmse = _icp(secs, r, kind, icp_kwargs)
    return Alignment(mats, transforms, reference, rmse)


def overlap_fractions(xy: list[np.ndarray], spacing: float) -> list[float]:
    """Per adjacent pair: the larger share of one section's spots with a spot of the other within ``spacing``."""
    from scipy.spatial import cKDTree

    out = []
    for a, b in zip(xy[:-1], xy[1:]):
        fa = float(np.mean(cKDTree(b).query(a)[0] <= spacing))
        fb = float(np.mean(cKDTree(a).query(b)[0] <= spacing))
        out.append(max(fa, fb))
    return out


def check_aligned(secs: list[Section], fracs: list[float], spacing: float, min_overlap: float) -> None:
    """Raise when adjacent sections do not overlap; warn when their spot radii differ."""
    bad = [f"{a.name}-{b.name} ({f:.0%})" for a, b, f in zip(secs[:-1], secs[1:], fracs) if f < min_overlap]
    if bad:
        raise StmapInputError(
            f"Adjacent sections do not overlap after alignment (share of spots with a spot of the other section "
            f"within one spacing, {spacing:.4g} um): {', '.join(bad)}. Align them: pass `transforms='icp'`, "
            "'landmarks', 'warped' (registered coordinates) or one 3x3 matrix per section."
        )
    med_r = np.array([np.median(s.radius_um) for s in secs])
    if np.ptp(med_r) > 0.05 * med_r.min():
        warnings.warn(
            f"Spot radii differ between sections ({dict(zip([s.name for s in secs], np.round(med_r, 3)))} um); "
            f"per-spot radii are kept in obs[{Key.obs.spot_radius_um!r}] and used by the overlap graph.",
            UserWarning,
            stacklevel=4,
        )
