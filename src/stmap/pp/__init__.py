"""stmap.pp."""
