"""i3ad: visual anomaly detection by iterative image inpainting with a structural-similarity mask."""

__version__ = "0.1.0"
