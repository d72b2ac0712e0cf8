"""Per-session and per-movie processing steps behind the operators."""
