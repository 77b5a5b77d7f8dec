"""One model explained from two threads at once; probabilities are the model's own output.

Two real threads share one loaded model: explanations take turns, and each
gets the answer it would get alone. A MONAI ViT whose head ends in Tanh is
explained at the Linear before the Tanh (its score layer), while the
probabilities shown are the softmax of what the model itself outputs.
"""

import threading
import time

import numpy as np
import pytest
import torch
from tests.pipeline.test_explain_volume import BrightSpotModel

from napari_vitcam import grad_cam
from napari_vitcam.models.loaded_model import LoadedModel
from napari_vitcam.models.spec import InputSpec, ModelSpec, Normalization
from napari_vitcam.models.spec_defaults import complete_spec
from napari_vitcam.pipeline.explain import explain_volume
from napari_vitcam.pipeline.preprocess import prepare_input


class SlowModel(BrightSpotModel):
    """Pauses after its target layer, so a second thread's run starts while the first is inside."""

    def forward(self, x):
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = self.blocks[0](torch.cat([self.cls_token.expand(len(x), -1, -1), t], 1))
        time.sleep(0.3)
        score = t[:, 1:].sum(dim=(1, 2))[:, None]
        return torch.cat([score, -score], dim=1)


def volumes():
    first = np.zeros((32, 32, 32), np.float32)
    first[4:12, 4:12, 4:12] = 3.0
    second = np.zeros((32, 32, 32), np.float32)
    second[20:30, 18:26, 2:10] = 7.0
    return first, second


def run_together(jobs):
    """Run each job in its own thread, started together; their results or errors, in order."""
    barrier = threading.Barrier(len(jobs))
    outcomes = [None] * len(jobs)

    def work(i, job):
        barrier.wait()
        try:
            outcomes[i] = job()
        except Exception as error:  # the test reports it
            outcomes[i] = error

    threads = [threading.Thread(target=work, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    return outcomes


def test_two_threads_explaining_one_model_take_turns_and_get_their_own_answers():
    spec = ModelSpec(InputSpec(1, (32, 32, 32)), ("bright", "dark"), "blocks.0")
    shared = LoadedModel(SlowModel(), spec)
    first, second = volumes()
    alone = [explain_volume(LoadedModel(SlowModel(), spec), v) for v in (first, second)]
    together = run_together([lambda: explain_volume(shared, first), lambda: explain_volume(shared, second)])
    for result, expected in zip(together, alone, strict=False):
        assert not isinstance(result, Exception), result
        np.testing.assert_allclose(result.heatmap, expected.heatmap, atol=1e-6)
        np.testing.assert_allclose(result.probabilities, expected.probabilities, rtol=1e-6)
    assert shared.model.training and not shared.model.patch_embed._forward_hooks  # flags restored, hooks gone


def test_two_threads_calling_grad_cam_on_one_model_take_turns():
    model = SlowModel()
    inputs = [torch.from_numpy(v)[None, None] for v in volumes()]
    alone = [grad_cam(SlowModel(), x, "blocks.0").cam for x in inputs]
    together = run_together([lambda x=x: grad_cam(model, x, "blocks.0").cam for x in inputs])
    for cam, expected in zip(together, alone, strict=False):
        assert not isinstance(cam, Exception), cam
        torch.testing.assert_close(cam, expected)


def tanh_vit():
    pytest.importorskip("monai", reason="the monai extra is not installed")
    pytest.importorskip("einops", reason="MONAI's ViT needs einops")
    from monai.networks.nets import ViT

    torch.manual_seed(3)
    model = ViT(
        in_channels=1,
        img_size=(16, 16, 16),
        patch_size=(8, 8, 8),
        hidden_size=32,
        mlp_dim=64,
        num_layers=2,
        num_heads=2,
        classification=True,
        num_classes=2,
        post_activation="Tanh",
    ).eval()
    with torch.no_grad():  # a confident pre-Tanh score, as a trained head gives
        model.classification_head[0].weight.mul_(40.0)
    spec = ModelSpec(InputSpec(1, (16, 16, 16), Normalization("zscore")), (), "blocks.1.norm1")
    return LoadedModel(model, complete_spec(model, spec))


def test_probabilities_are_the_models_own_output_and_the_score_layer_is_named():
    loaded = tanh_vit()
    assert loaded.spec.score_layer == "classification_head.0"
    volume = np.random.default_rng(5).normal(size=(20, 18, 16)).astype(np.float32)
    seen = []
    handle = loaded.model.classification_head[0].register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        x = prepare_input(volume, loaded.spec.input, torch.device("cpu"))
        output = loaded.model(x)[0]
    handle.remove()
    (pre_tanh,) = seen
    assert torch.allclose(torch.tanh(pre_tanh), output, atol=1e-5)
    own, pre = output.softmax(1)[0].numpy(), pre_tanh.softmax(1)[0].numpy()
    assert abs(own.max() - pre.max()) > 0.05, (own, pre)  # the test can tell them apart

    result = explain_volume(loaded, volume)
    np.testing.assert_allclose(result.probabilities, own, rtol=1e-5)
    assert result.predicted_class == int(np.argmax(own))
    assert result.score_layer == "classification_head.0"
    assert result.scores_explained == "classification_head.0 (before the model's output activation)"
    assert result.heatmap.max() == pytest.approx(1.0)
