"""model_input rebuilds exactly what explain_volume gave the model, so a map can be checked against the model."""

import numpy as np
import torch

from napari_vitcam.engine.cam import grad_cam
from napari_vitcam.models.loaded_model import LoadedModel
from napari_vitcam.models.spec import InputSpec, ModelSpec, Normalization
from napari_vitcam.pipeline.explain import explain_volume, model_input
from napari_vitcam.pipeline.frame import ModelFrame


def test_the_rebuilt_input_gives_the_same_token_map_on_the_same_grid(vit):
    loaded = LoadedModel(
        vit, ModelSpec(InputSpec(1, (16, 16, 16), Normalization("zscore")), ("a", "b"), "blocks.1.norm1")
    )
    volume = np.random.default_rng(0).normal(size=(20, 18, 22)).astype(np.float32)
    affine = np.diag([-1.0, 1.0, 2.0, 1.0])[[2, 0, 1, 3]]  # a stored axis order that is not the model's
    affine[3] = [0, 0, 0, 1]
    result = explain_volume(loaded, volume, device="cpu", affine=affine, frame=ModelFrame("RAS"))
    x = model_input(loaded, volume, device="cpu", affine=affine, frame=ModelFrame("RAS"))
    assert x.shape == (1, 1, 16, 16, 16) and result.grid is not None and result.grid.input_shape == (16, 16, 16)
    again = grad_cam(vit, x, "blocks.1.norm1", result.class_idx).token_cam[0]
    np.testing.assert_allclose(again.numpy(), result.token_cam, rtol=1e-5, atol=1e-6)
    assert result.grid.shape == tuple(again.shape)
    assert not torch.equal(x, model_input(loaded, volume, device="cpu"))  # the frame was applied
