"""Mask encodings that annotation platforms exchange: polygons, brush RLE, CVAT masks."""
