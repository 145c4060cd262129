"""Defend: act on detectors at inference (the guard). Empty until the guard lands."""
