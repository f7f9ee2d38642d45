"""stmap.pl."""
