"""The scoring engine: the hot path from ``{p}.events`` to predictions."""
