"""Third-party 3D transformers from a user's files: a state dict on disk, the user's factory, then explain_volume.

vit-pytorch's ViT (blocks in ModuleLists never called as modules, a 2-tuple patch plus frame_patch_size)
and a classifier on MONAI's SwinTransformer (windowed attention, channel-last blocks), each loaded with
``load_checkpoint(factory=...)`` as a user would, explained with the default method and with a layer method.
"""

import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from napari_vitcam.core.errors import VitcamError
from napari_vitcam.engine.dispatch import explain_tokens
from napari_vitcam.models.checkpoint import load_checkpoint
from napari_vitcam.models.spec import InputSpec, ModelSpec, Normalization
from napari_vitcam.models.targets import method_for
from napari_vitcam.pipeline.explain import explain_volume, model_input

MODULE = "vitcam_third_party_factories"
SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn

    from napari_vitcam.testing.thirdparty import vit_pytorch_vit


    def vit(size=16):
        return vit_pytorch_vit(size=size, patch=4, frame_patch=4, depth=2)


    class SwinClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            from monai.networks.nets.swin_unetr import SwinTransformer

            self.swin = SwinTransformer(
                in_chans=1, embed_dim=12, window_size=(4, 4, 4), patch_size=(2, 2, 2),
                depths=(1, 1, 1, 1), num_heads=(2, 2, 2, 2), spatial_dims=3,
            )
            self.head = nn.Linear(192, 2)

        def forward(self, x):
            return self.head(self.swin(x)[-1].mean(dim=(2, 3, 4)))


    def swin():
        return SwinClassifier()
    """
)


@pytest.fixture
def factories(tmp_path, monkeypatch):
    (tmp_path / f"{MODULE}.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield MODULE
    sys.modules.pop(MODULE, None)


def saved_weights(tmp_path, factory_name: str):
    module = __import__(MODULE)
    torch.manual_seed(0)
    model = getattr(module, factory_name)()
    path = tmp_path / f"{factory_name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, model


def test_a_vit_pytorch_checkpoint_is_explained_with_rollout_by_default(tmp_path, factories):
    path, original = saved_weights(tmp_path, "vit")
    spec = ModelSpec(InputSpec(1, (16, 16, 16), Normalization("zscore")), ("calm", "busy"))
    loaded = load_checkpoint(path, factory=f"{MODULE}:vit", spec=spec)
    assert loaded.format == "state-dict"
    assert loaded.spec.target_layer is not None and loaded.spec.target_layer.startswith("transformer.layers.")
    assert method_for(loaded).method == "rollout"  # a cls token
    volume = np.random.default_rng(0).normal(size=(20, 18, 16)).astype(np.float32)
    result = explain_volume(loaded, volume, method="auto", class_idx="busy", device="cpu")
    assert result.method == "rollout" and result.heatmap.shape == volume.shape and result.heatmap.max() == 1.0
    x = model_input(loaded, volume, device="cpu")
    direct = explain_tokens(original.eval(), x, "rollout", None, 1).token_cam[0]
    np.testing.assert_allclose(result.token_cam, direct.numpy(), rtol=1e-5, atol=1e-7)
    layer = explain_volume(loaded, volume, method="gradcam", class_idx="busy", device="cpu")
    assert layer.target_layer == loaded.spec.target_layer and layer.grid is not None and layer.grid.shape == (4, 4, 4)


def test_a_monai_swin_classifier_is_explained_at_its_recommended_stage(tmp_path, factories):
    path, _ = saved_weights(tmp_path, "swin")
    spec = ModelSpec(InputSpec(1, (32, 32, 32), Normalization("zscore")), ("calm", "busy"))
    loaded = load_checkpoint(path, factory=f"{MODULE}:swin", spec=spec)
    assert loaded.spec.target_layer is not None and loaded.spec.target_layer.startswith("swin.layers")
    choice = method_for(loaded)
    assert choice.method == "gradcam"  # windowed attention is not one token sequence: a layer method
    volume = np.random.default_rng(1).normal(size=(30, 34, 32)).astype(np.float32)
    result = explain_volume(loaded, volume, method="auto", device="cpu")
    assert result.method == "gradcam" and result.target_layer == choice.target_layer
    assert result.heatmap.shape == volume.shape and np.isfinite(result.heatmap).all()
    with pytest.raises(VitcamError, match="attention") as refused:
        explain_volume(loaded, volume, method="relevance", device="cpu")
    assert "\n" not in str(refused.value)
