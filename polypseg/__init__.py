"""polypseg: box- and click-prompted polyp segmentation for annotation tools."""

__version__ = "0.1.0"
