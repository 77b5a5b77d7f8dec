"""The model's frame: a scan reoriented exactly as nibabel does, and one heatmap in world space whatever the storage."""

import itertools

import nibabel as nib
import numpy as np
import pytest
import torch

import napari_vitcam as nv
from napari_vitcam.core.errors import InputError
from napari_vitcam.models.spec import InputSpec, ModelSpec, Normalization
from napari_vitcam.pipeline.frame import ModelFrame, reorientation
from napari_vitcam.testing.scans import oblique_affine


def stored_as(array, affine, order, flips):
    """The same scan stored with its axes permuted by ``order`` and flipped where ``flips`` says."""
    out = np.transpose(array, order)
    new = np.array(affine, dtype=float)
    new[:, :3] = new[:, list(order)]
    for k, flip in enumerate(flips):
        if flip:
            new[:3, 3] += new[:3, k] * (out.shape[k] - 1)
            new[:3, k] *= -1
    return np.flip(out, axis=[k for k in range(3) if flips[k]]), new


STORAGES = [((0, 1, 2), (False, False, False)), ((2, 0, 1), (True, False, False)), ((1, 2, 0), (False, True, True))]


@pytest.mark.parametrize(("order", "flips"), STORAGES)
def test_reorienting_to_ras_is_nibabels_closest_canonical(order, flips):
    base = oblique_affine((2.5, 0.9, 1.2), 12.0, flip=1)
    array, affine = stored_as(np.random.default_rng(0).normal(size=(6, 9, 7)), base, order, flips)
    turn = reorientation(affine, ModelFrame("RAS"))
    canonical = nib.as_closest_canonical(nib.Nifti1Image(np.ascontiguousarray(array), affine))
    np.testing.assert_array_equal(turn.apply(array), canonical.get_fdata())
    np.testing.assert_allclose(turn.affine(affine, array.shape), canonical.affine, atol=1e-9)
    np.testing.assert_array_equal(turn.undo(turn.apply(array)), array)


def test_other_frames_and_channels():
    affine = np.diag([-1.0, 2.0, 3.0, 1.0])  # stored LAS
    volume = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    turn = reorientation(affine, ModelFrame("sal"))
    assert turn.order == (2, 1, 0) and turn.flips == (False, False, False)
    assert turn.apply(volume).shape == (2, 5, 4, 3)
    lps = reorientation(affine, ModelFrame("LPS"))
    assert lps.order == (0, 1, 2) and lps.flips == (False, True, False)
    assert np.shares_memory(lps.apply(volume), volume)


@pytest.mark.parametrize("codes", ["RAR", "XYZ", "RA", "RASI"])
def test_a_frame_is_three_axis_codes(codes):
    with pytest.raises(InputError, match="is not three axis codes"):
        ModelFrame(codes)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    torch.manual_seed(0)
    model = nv.ViT3D(img_size=16, patch_size=8, width=32, depth=2, heads=2)
    spec = ModelSpec(InputSpec(1, (16, 16, 16), Normalization("zscore")), ("calm", "busy"), "blocks.1.norm1")
    return nv.load_checkpoint(nv.save_checkpoint(tmp_path_factory.mktemp("m") / "model.safetensors", model, spec))


def test_one_scan_in_several_storages_gives_one_heatmap_in_world_space(loaded):
    base = oblique_affine((2.0, 0.8, 1.1), 8.0, flip=None)
    scan = np.random.default_rng(1).normal(size=(12, 20, 16)).astype(np.float32)
    reference = nv.explain_volume(loaded, scan, class_idx="busy", affine=base, frame=ModelFrame("RAS"))
    assert reference.heatmap.shape == scan.shape and reference.preprocessing["frame"] == "RAS"
    for order, flips in STORAGES[1:]:
        stored, affine = stored_as(scan, base, order, flips)
        result = nv.explain_volume(loaded, stored, class_idx="busy", affine=affine, frame=ModelFrame("RAS"))
        assert result.heatmap.shape == stored.shape
        back, _ = stored_as(reference.heatmap, base, order, flips)  # the reference map stored the same way
        assert np.corrcoef(back.ravel(), result.heatmap.ravel())[0, 1] >= 0.99
        np.testing.assert_allclose(result.heatmap, back, atol=1e-5)
    # and without the frame the storage changes what the model sees
    stored, _ = stored_as(scan, base, *STORAGES[1])
    plain = nv.explain_volume(loaded, stored, class_idx="busy")
    back, _ = stored_as(reference.heatmap, base, *STORAGES[1])
    assert not np.allclose(plain.heatmap, back, atol=1e-3)


def test_a_frame_without_geometry_is_said_in_one_line(loaded):
    scan = np.random.default_rng(2).normal(size=(16, 16, 16)).astype(np.float32)
    result = nv.explain_volume(loaded, scan, frame=ModelFrame("RAS"))
    note = result.preprocessing["frame_note"]
    assert (
        note.startswith("the model expects RAS-oriented volumes but this volume's geometry is unknown")
        and "\n" not in note
    )
    np.testing.assert_allclose(result.heatmap, nv.explain_volume(loaded, scan).heatmap, atol=1e-6)


def test_every_one_of_the_48_storages_reorients_to_the_same_array():
    base = oblique_affine((2.0, 0.8, 1.1), 8.0, flip=None)
    scan = np.random.default_rng(3).normal(size=(3, 4, 5))
    target = reorientation(base, ModelFrame("RAS")).apply(scan)
    for order in itertools.permutations(range(3)):
        for flips in itertools.product((False, True), repeat=3):
            stored, affine = stored_as(scan, base, order, flips)
            np.testing.assert_array_equal(reorientation(affine, ModelFrame("RAS")).apply(stored), target)
