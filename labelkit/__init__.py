"""labelkit: pseudo-labeling and label-cleaning toolkit."""

__version__ = "0.1.0"
