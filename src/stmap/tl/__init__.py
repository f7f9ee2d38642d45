"""stmap.tl."""
