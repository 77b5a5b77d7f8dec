"""The demo training command, end to end on a tiny budget, and its batches."""

import torch

from napari_vitcam.checkpoint import load_checkpoint
from napari_vitcam.demo.evaluate import block_targets
from napari_vitcam.demo.train import curriculum, main, training_batch, zero_sum_head
from napari_vitcam.demo.volumes import make_volume
from napari_vitcam.vit import ViT3D


def test_training_batch_lesion_free_tail_and_masks():
    diameters, contrasts, distractors = curriculum(1.0)
    seeds = range(10_000_000, 10_000_006)
    x, target, masks = training_batch(seeds, diameters, contrasts, distractors, lesion_free_share=0.5)
    assert x.shape == (6, 1, 64, 64, 64) and target.shape == (6, 2) and masks.shape == (6, 64, 64, 64)
    # z-scored per volume, as the explanation pipeline does
    torch.testing.assert_close(x.mean(dim=(1, 2, 3, 4)), torch.zeros(6), atol=1e-4, rtol=0)
    # the first half shows its lesion, with a one-hot target and its mask
    assert torch.equal(target[:3].max(1).values, torch.ones(3))
    assert all(bool(m.any()) for m in masks[:3])
    # the last half is lesion-free: target 1/2 for each class, empty mask
    assert torch.equal(target[3:], torch.full((3, 2), 0.5)) and not bool(masks[3:].any())


def test_zero_sum_head_keeps_the_probabilities():
    torch.manual_seed(0)
    model = ViT3D(img_size=16, patch_size=8, width=16, depth=1, heads=2, num_classes=3, pool="attn").eval()
    torch.nn.init.normal_(model.head.bias)
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        before = model(x)
        zero_sum_head(model)
        after = model(x)
    torch.testing.assert_close(after.softmax(1), before.softmax(1))
    torch.testing.assert_close(after.sum(1), torch.zeros(2), atol=1e-5, rtol=0)
    assert not torch.allclose(after, before)


def test_train_demo_writes_a_loadable_checkpoint(tmp_path, capsys):
    out = tmp_path / "tiny.safetensors"
    state = tmp_path / "state.pt"
    argv = [
        "--out", str(out), "--state", str(state), "--steps", "4", "--minutes", "0", "--batch", "4",
        "--width", "16", "--depth", "1", "--heads", "2", "--val-volumes", "4", "--block-volumes", "2",
        "--log-every", "2", "--pooling-weight", "0.3",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "pool attn" in printed and "finished after 4 steps" in printed and "recommended block" in printed
    loaded = load_checkpoint(out)
    assert loaded.spec.class_names == ("solid", "ring")
    assert loaded.model.config.pool == "attn" and loaded.model.config.width == 16
    assert loaded.spec.target_layer in block_targets(loaded.model)
    assert loaded.spec.input.normalization.kind == "zscore"
    torch.testing.assert_close(loaded.model.head.weight.sum(0), torch.zeros(16), atol=1e-6, rtol=0)
    assert torch.load(state, weights_only=True)["step"] == 4
    volume = make_volume(3)
    with torch.no_grad():
        probabilities = loaded.model(torch.from_numpy(volume.volume)[None, None]).softmax(1)
    assert probabilities.shape == (1, 2)
