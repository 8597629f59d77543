"""Krypton: occlusion sensitivity heatmaps for CNN classifiers, fast."""

__version__ = "0.2.0"
