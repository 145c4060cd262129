"""Analysis: which differences between two prompt sets are real (``compare``), and sentences about them (``observe``)."""
