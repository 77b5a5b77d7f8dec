"""The engine: tensors in, maps out.

Capture of activations and gradients (:mod:`.capture`), model introspection
(:mod:`.introspect`), the token grid and layouts (:mod:`.token_grid`), the
token-to-voxel map (:mod:`.voxel_map`), the explainers and their registry
(:mod:`.explainers`), the run that computes a map (:mod:`.cam`) and target
discovery (:mod:`.targets`). Pure torch: no file I/O, no Qt, no napari.
"""
