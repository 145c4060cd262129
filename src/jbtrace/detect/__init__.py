"""Detect: per-layer jailbreak detectors from internal representations (CP features, training,
saved detectors)."""
