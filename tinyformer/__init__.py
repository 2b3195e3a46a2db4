"""tinyformer: train tiny Transformers from scratch and study them."""

__version__ = "0.1.0"
