"""Commands as library functions: each does a whole job; the CLI parses, calls and prints."""
