"""Sane bounds on what a spec or an architecture may ask for, checked before anything is allocated.

A checkpoint is data from somewhere else: a size of 100000³ voxels or a ViT
width of 200000 would make the loader allocate until the machine refuses. Each
bound is far above any model or volume napari-vitcam is meant for, and a spec
over one is refused with a one-line message that names the bound.
"""

from __future__ import annotations

#: Voxels along one axis of a model's input.
MAX_SIDE = 2048
#: Voxels of a model's whole input (per channel): 512³, 512 MiB as float32.
MAX_VOXELS = 512**3
#: Input channels.
MAX_CHANNELS = 1024
#: Classes (outputs of the head).
MAX_CLASSES = 100_000
#: Parameters and buffers of a model built from a spec (2 billion: 8 GB as float32).
MAX_PARAMETERS = 2_000_000_000
#: Reference ViT: embedding width, blocks, heads, tokens (patches) and the MLP's width ratio.
MAX_WIDTH = 16_384
MAX_DEPTH = 512
MAX_HEADS = 1024
MAX_TOKENS = 262_144
MAX_MLP_RATIO = 64.0
#: Voxel size a spec may declare, in mm along one axis (a metre: far above any scan's).
MAX_SPACING_MM = 1000.0
