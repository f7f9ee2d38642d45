"""stmap.models."""
