"""jbtrace: see and measure what a jailbreak does inside a language model."""

__version__ = "0.1.0"
