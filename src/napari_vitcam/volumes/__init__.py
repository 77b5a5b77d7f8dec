"""Volume I/O: reading volumes from files and writing heatmaps, one registry of file formats.

Shared by the command line and the napari reader. No Qt, no napari.
"""
