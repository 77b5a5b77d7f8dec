"""Sweeps: every block from one forward and one backward, every class from one forward; each slice as run alone."""

import pytest
import torch

import napari_vitcam as nv
from napari_vitcam.engine.sweeps import sweep_blocks, sweep_classes
from napari_vitcam.testing.thirdparty import monai_vit_after_stem, vit_pytorch_simple_vit


class CountingForward:
    """Counts the model's forward calls and backward passes through its head."""

    def __init__(self, model, head):
        self.forwards = 0
        self.backwards = 0
        model.register_forward_pre_hook(self._forward)
        head.register_full_backward_hook(self._backward)

    def _forward(self, module, args):
        self.forwards += 1

    def _backward(self, module, grad_in, grad_out):
        self.backwards += 1


@pytest.fixture
def vit():
    torch.manual_seed(0)
    return nv.ViT3D(img_size=16, patch_size=4, width=32, depth=3, heads=2, num_classes=3)


def test_every_block_from_one_forward_and_one_backward_equals_each_run_alone(vit):
    x = torch.randn(2, 1, 16, 16, 16)
    counter = CountingForward(vit, vit.head)
    sweep = sweep_blocks(vit, x, ["blocks.0.norm1", "blocks.1", "blocks.2.norm1"], "hirescam", class_idx=[2, 1])
    assert (counter.forwards, counter.backwards) == (1, 1)
    assert sweep.cams.shape == (2, 3, 16, 16, 16) and sweep.labels == ("blocks.0.norm1", "blocks.1", "blocks.2.norm1")
    assert sweep.class_idx.tolist() == [[2, 2, 2], [1, 1, 1]]
    for k, target in enumerate(sweep.labels):
        alone = nv.grad_cam(vit, x, target, [2, 1], method="hirescam")
        torch.testing.assert_close(sweep.token_cams[k], alone.token_cam, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(sweep.cams[:, k], alone.cam, atol=1e-6, rtol=1e-5)


def test_default_blocks_are_the_listed_targets_with_a_gradient(vit):
    x = torch.randn(1, 1, 16, 16, 16)
    sweep = sweep_blocks(vit, x)
    listed = [c.name for c in nv.list_targets(vit, x) if not c.zero_gradient]
    assert list(sweep.labels) == listed and "blocks.2" not in listed  # the cls-token ViT's last block output
    with pytest.raises(nv.InputError, match="sweep blocks with a gradient method"):
        sweep_blocks(vit, x, method="rollout")


@pytest.mark.parametrize(
    ("method", "target"), [("gradcam", "blocks.2.norm1"), ("relevance", None), ("rollout", None), ("occlusion", None)]
)
def test_every_class_equals_each_class_run_alone(vit, method, target):
    x = torch.randn(2, 1, 16, 16, 16)
    counter = CountingForward(vit, vit.head)
    sweep = sweep_classes(vit, x, method, target, class_names=("a", "b"))
    if method != "occlusion":
        assert counter.forwards == 1 and counter.backwards == 3
    assert sweep.labels == ("a", "b", "class 2") and sweep.cams.shape == (2, 3, 16, 16, 16)
    for c in range(3):
        alone = nv.explain_tokens(vit, x, method, target, c)
        torch.testing.assert_close(sweep.token_cams[c], alone.token_cam, atol=1e-6, rtol=1e-5)


def test_class_sweep_on_a_pooled_third_party_model_chosen_classes():
    torch.manual_seed(1)
    model = vit_pytorch_simple_vit()
    x = torch.randn(1, 1, 16, 16, 16)
    sweep = sweep_classes(model, x, "gradcam", "transformer.norm", classes=[1])
    alone = nv.grad_cam(model, x, "transformer.norm", 1)
    torch.testing.assert_close(sweep.token_cams[0], alone.token_cam, atol=1e-6, rtol=1e-5)
    assert sweep.class_idx.tolist() == [[1]]


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_attention_methods_and_sweeps_work_inside_no_grad_and_inference_mode(vit, mode):
    x = torch.randn(1, 1, 16, 16, 16)
    expected = nv.explain_tokens(vit, x, "relevance").token_cam
    with mode():
        relevance = nv.explain_tokens(vit, x, "relevance").token_cam
        blocks = sweep_blocks(vit, x, ["blocks.1.norm1"])
        classes = sweep_classes(vit, x, "rollout", classes=[0])
        assert not torch.is_grad_enabled()
    torch.testing.assert_close(relevance, expected)
    assert blocks.cams.shape == (1, 1, 16, 16, 16) and classes.cams.shape == (1, 1, 16, 16, 16)


@pytest.mark.parametrize("method", ["gradcam", "relevance", "rollout", "occlusion"])
def test_every_entry_point_refuses_a_nan_input_in_one_line(vit, method):
    x = torch.randn(1, 1, 16, 16, 16)
    x[0, 0, 1, 2, 3] = float("nan")
    with pytest.raises(nv.InputError, match=r"x holds 1 non-finite value\(s\).*\(0, 0, 1, 2, 3\)"):
        nv.explain_tokens(vit, x, method, "blocks.1.norm1" if method == "gradcam" else None, 0)
    with pytest.raises(nv.InputError, match="non-finite"):
        sweep_blocks(vit, x, method=method, class_idx=0)
    with pytest.raises(nv.InputError, match="non-finite"):
        sweep_classes(vit, x, method, "blocks.1.norm1" if method == "gradcam" else None)


@pytest.mark.parametrize("method", ["rollout", "relevance"])
def test_an_attention_class_sweep_on_a_grid_the_attention_does_not_cover_says_so_in_one_line(method):
    torch.manual_seed(0)
    model = monai_vit_after_stem().eval()  # the stem's 16^3 grid is found first
    x = torch.randn(1, 1, 32, 32, 32)
    for run in (lambda: nv.explain_tokens(model, x, method), lambda: sweep_classes(model, x, method)):
        with pytest.raises(nv.LayoutError, match=r"covers 65 tokens, fewer than the 4096 .* pass the right token_grid"):
            run()
    sweep = sweep_classes(model, x, method, token_grid=(4, 4, 4))
    for k in range(2):
        alone = nv.explain_tokens(model, x, method, class_idx=k, token_grid=(4, 4, 4))
        torch.testing.assert_close(sweep.cams[:, k], alone.cam)


def test_a_block_followed_by_an_in_place_operation_sweeps_as_it_runs_alone():
    # MONAI's DenseNet: features.norm5 (BatchNorm) is followed by ReLU(inplace=True), which
    # overwrote the recorded activation: the sweep read the ReLU's output and its gradient instead.
    from monai.networks.nets import DenseNet

    torch.manual_seed(0)
    model = DenseNet(
        spatial_dims=3, in_channels=1, out_channels=3, init_features=8, growth_rate=4, block_config=(2, 2), bn_size=2
    ).eval()
    x = torch.randn(1, 1, 48, 48, 48)
    targets = ["features.denseblock2", "features.norm5"]
    sweep = sweep_blocks(model, x, targets, "gradcam", 0)
    for k, target in enumerate(targets):
        alone = nv.grad_cam(model, x, target, 0)
        torch.testing.assert_close(sweep.cams[:, k], alone.cam)
