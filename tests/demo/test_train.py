"""The demo training command, end to end on a tiny budget, and its batches."""

import math

import numpy as np
import pytest
import torch

from napari_vitcam.demo.evaluate import block_targets
from napari_vitcam.demo.train import curriculum, main, normalize_batch, training_batch, zero_sum_head
from napari_vitcam.demo.volumes import make_volume
from napari_vitcam.models.architectures.vit3d import ViT3D
from napari_vitcam.models.checkpoint import load_checkpoint


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


def test_training_batch_twins_are_the_lesion_volumes_without_their_lesion():
    diameters, contrasts, distractors = curriculum(1.0)
    seeds = range(10_000_100, 10_000_108)
    x, target, masks = training_batch(seeds, diameters, contrasts, distractors, lesion_free_share=0.25, small_share=0.5)
    # 6 volumes with a lesion, then the lesion-free twins of the first two
    assert torch.equal(target[6:], torch.full((2, 2), 0.5)) and not bool(masks[6:].any())
    small = (diameters[0], diameters[0] + (diameters[1] - diameters[0]) / 3)
    for i in range(2):
        v = make_volume(seeds[i], diameter_range=small, contrast_range=contrasts, with_healthy=True)
        torch.testing.assert_close(x[i], normalize_batch(torch.from_numpy(v.volume)[None, None])[0])
        torch.testing.assert_close(x[6 + i], normalize_batch(torch.from_numpy(v.healthy)[None, None])[0])
        assert torch.equal(masks[i], torch.from_numpy(v.mask))
    # the first half of the lesion volumes are small: diameter in the lower third (8 to 12 voxels)
    lesion_voxels = masks[:6].sum(dim=(1, 2, 3)).float()
    largest_small = 4 / 3 * math.pi * (small[1] / 2 + 0.5) ** 3
    assert bool((lesion_voxels[:3] <= largest_small).all())
    # fresh lesion-free volumes come from their own seeds instead
    x_fresh, _, _ = training_batch(seeds, diameters, contrasts, distractors, lesion_free_share=0.25, twins=False)
    with pytest.raises(ValueError, match="need volumes with a lesion"):
        training_batch(seeds, diameters, contrasts, distractors, lesion_free_share=1.0)
    v = make_volume(seeds[7], diameter_range=diameters, contrast_range=contrasts, with_healthy=True)
    torch.testing.assert_close(x_fresh[7], normalize_batch(torch.from_numpy(v.healthy)[None, None])[0])


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
        "--out",
        str(out),
        "--state",
        str(state),
        "--steps",
        "4",
        "--minutes",
        "0",
        "--batch",
        "4",
        "--width",
        "16",
        "--depth",
        "1",
        "--heads",
        "2",
        "--val-volumes",
        "4",
        "--block-volumes",
        "2",
        "--log-every",
        "2",
        "--pooling-weight",
        "0.3",
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


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--steps", "0"], "--steps 0: give at least 1"),
        (["--steps", "-1"], "--steps -1: give at least 1"),
        (["--batch", "0"], "--batch 0: give at least 1"),
        (["--depth", "0"], "--depth 0: give at least 1"),
        (["--width", "30", "--heads", "4"], "--width 30 is not divisible by --heads 4"),
        (["--minutes", "-1"], "--minutes -1.0: give 0 (none) or more"),
        (["--out", "{scan}"], "cannot save the checkpoint as scan.npy: end --out with .safetensors"),
        (["--out", "{old}"], "old.safetensors exists: choose another --out, or pass --force"),
        (["--out", "{tmp}/new.pt", "--state", "{tmp}/new.pt"], "--state and --out name the same file"),
    ],
)
def test_train_demo_refuses_bad_arguments_in_one_line_before_training(tmp_path, capsys, extra, expected):
    scan, old = tmp_path / "scan.npy", tmp_path / "old.safetensors"
    np.save(scan, np.zeros(4, np.float32))
    old.write_bytes(b"a checkpoint of the user's")
    argv = [a.format(scan=scan, old=old, tmp=tmp_path) for a in ["--out", str(tmp_path / "x.safetensors"), *extra]]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing was trained
    err = captured.err.strip()
    assert err.startswith("napari-vitcam train-demo: ") and expected in err and "\n" not in err
    assert old.read_bytes() == b"a checkpoint of the user's" and np.load(scan).shape == (4,)
