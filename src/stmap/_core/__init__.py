"""Internal core: the only code that knows SpatialData/AnnData layouts."""
