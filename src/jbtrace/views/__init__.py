"""Views: figures (every function returns a matplotlib Figure) and the files a result writes
into a run."""
