"""Trace: forward passes reduced on the device into exact per-cell moments, attention maps, the
trace store."""
