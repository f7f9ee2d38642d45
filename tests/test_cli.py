from __future__ import annotations

import spatialdata as sd

from stmap.cli import DEMO_STEPS, main


def test_demo_writes_zarr_and_figures(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    back = sd.read_zarr(out / "demo.zarr")
    assert {"spots", "cells"} <= set(back.tables.keys())
    assert "moranI" in back.tables["spots"].uns  # the squidpy step's result survived the round trip
    hd = sd.read_zarr(out / "visium_hd.zarr")  # the Visium HD step: reader-made object, units recorded by stmap
    assert "stmap_cell_type_fractions" in hd.tables["square_016um"].obsm
    assert hd.attrs["stmap_coordinate_units"]["sample"]["um_per_unit"] > 0
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) >= len(DEMO_STEPS)
    assert all(p.stat().st_size > 1000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
