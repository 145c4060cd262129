"""Analysis: which differences between two prompt sets are real (``compare``).

Sentences about them come from ``observe``.
"""
