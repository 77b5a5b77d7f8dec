"""The model's spacing: a scan resampled to it (as MONAI does) and its heatmap mapped back onto the scan's grid."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Orientation, ResizeWithPadOrCrop, Spacing
from scipy import ndimage

import napari_vitcam as nv
from napari_vitcam.models.spec import InputSpec, ModelSpec, Normalization
from napari_vitcam.pipeline.explain import model_input
from napari_vitcam.pipeline.frame import ModelFrame
from napari_vitcam.testing.scans import oblique_affine

SIZE = (16, 16, 16)
SPACING = (1.5, 1.0, 2.0)


def _save(tmp_path, spec_input, name="model.safetensors"):
    torch.manual_seed(0)
    model = nv.ViT3D(img_size=16, patch_size=8, width=32, depth=2, heads=2)
    spec = ModelSpec(spec_input, ("calm", "busy"), "blocks.1.norm1")
    return nv.load_checkpoint(nv.save_checkpoint(tmp_path / name, model, spec))


@pytest.fixture(scope="module")
def spaced(tmp_path_factory):
    spec_input = InputSpec(1, SIZE, Normalization("none"), orientation="RAS", spacing=SPACING, fit="crop_or_pad")
    return _save(tmp_path_factory.mktemp("spaced"), spec_input)


def monai_input(volume, affine, size=SIZE, spacing=SPACING):
    """What MONAI's Orientation, Spacing and ResizeWithPadOrCrop (their defaults) give, and its affine."""
    chain = Compose([Orientation(axcodes="RAS", labels=None), Spacing(pixdim=spacing), ResizeWithPadOrCrop(size)])
    out = chain(MetaTensor(torch.from_numpy(np.ascontiguousarray(volume))[None], affine=torch.tensor(affine)))
    return np.asarray(out)[0], np.asarray(out.affine, dtype=float)


AFFINES = {
    "permuted and flipped": np.array([[0, 0, -2.0, 10], [1.2, 0, 0, -5], [0, -0.8, 0, 3], [0, 0, 0, 1]]),
    "oblique": oblique_affine((2.5, 0.9, 1.2), 10.0, flip=1),
}


@pytest.mark.parametrize("name", list(AFFINES))
def test_the_model_sees_the_volume_as_monai_orientation_spacing_and_pad_or_crop_give_it(spaced, name):
    volume = np.random.default_rng(0).normal(size=(12, 20, 9)).astype(np.float32)
    ours = model_input(spaced, volume, affine=AFFINES[name], device="cpu")[0, 0].numpy()
    reference, _ = monai_input(volume, AFFINES[name])
    assert ours.shape == reference.shape == SIZE
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_a_model_with_a_declared_spacing_sees_the_volume_resampled_to_it(spaced):
    """The first layer records what the model got; a hand resampling (scipy) gives the same."""
    volume = np.random.default_rng(1).normal(size=(10, 30, 14)).astype(np.float32)
    affine = np.diag([3.0, 0.5, 1.0, 1.0])  # RAS already: no reorientation
    seen = []
    hook = spaced.model.patch_embed.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    try:
        result = nv.explain_volume(spaced, volume, affine=affine, device="cpu")
    finally:
        hook.remove()
    # by hand: resampled lengths round((n - 1) * s / t) + 1, first voxel centres kept, border repeated,
    # then centre crop (start n' // 2 - S // 2) or zero pad ((S - n') // 2 before)
    lengths = [round((n - 1) * s / t) + 1 for n, s, t in zip(volume.shape, (3.0, 0.5, 1.0), SPACING, strict=True)]
    assert result.preprocessing["resampled_shape"] == lengths == [19, 15, 7]
    coords = [np.arange(n) * t / s for n, s, t in zip(lengths, (3.0, 0.5, 1.0), SPACING, strict=True)]
    grid = np.meshgrid(*coords, indexing="ij")
    resampled = ndimage.map_coordinates(volume, grid, order=1, mode="nearest")
    expected = np.zeros(SIZE, dtype=np.float32)
    crop = 19 // 2 - 16 // 2
    expected[:, 0:15, 4 : 4 + 7] = resampled[crop : crop + 16]
    assert len(seen) >= 1
    np.testing.assert_allclose(seen[0][0, 0].numpy(), expected, atol=1e-5)
    assert result.heatmap.shape == volume.shape


def test_the_heatmap_lands_on_the_source_voxels_the_model_saw(spaced):
    """With patch upsampling each source voxel takes its token's value; the token is found through MONAI's affine."""
    affine = AFFINES["permuted and flipped"]
    volume = np.random.default_rng(2).normal(size=(30, 20, 9)).astype(np.float32)
    result = nv.explain_volume(spaced, volume, affine=affine, device="cpu", upsample="patch")
    assert result.heatmap.shape == volume.shape
    _, model_affine = monai_input(volume, affine)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij"), -1).reshape(-1, 3)
    world = np.c_[index, np.ones(len(index))] @ affine.T
    m = (world @ np.linalg.inv(model_affine).T)[:, :3] + 0.5  # model input coordinate, voxel j spans [j, j+1)
    seen = np.all((m >= 0) & (m < np.array(SIZE)), axis=1)
    tokens = np.floor(m[seen] / 8).astype(int)
    expected = np.zeros(len(index), dtype=np.float32)
    expected[seen] = result.token_cam[tokens[:, 0], tokens[:, 1], tokens[:, 2]] / result.raw_max
    np.testing.assert_allclose(result.heatmap.reshape(-1), expected, atol=1e-5)
    assert (~seen).any() and seen.any()  # part of the scan lies outside the model's 16 voxels


def blob(shape, spacing):
    """An analytic object sampled on a grid of ``spacing`` mm with its first voxel at the origin: two Gaussians."""
    axes = [np.arange(n) * s for n, s in zip(shape, spacing, strict=True)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    first = np.exp(-((x - 12) ** 2 + (y - 18) ** 2 + (z - 14) ** 2) / (2 * 4.0**2))
    second = 0.7 * np.exp(-((x - 20) ** 2 + (y - 10) ** 2 + (z - 20) ** 2) / (2 * 3.0**2))
    return (first + second).astype(np.float32)


def test_one_object_sampled_two_ways_gives_one_heatmap_in_world_space(tmp_path):
    """1 mm isotropic vs 2 x 1 x 1 mm, the second also stored flipped and permuted (LPS-like)."""
    spec_input = InputSpec(
        1, (32, 32, 32), Normalization("none"), orientation="RAS", spacing=(1.0, 1.0, 1.0), fit="crop_or_pad"
    )  # with fit "resize" the spacing would change nothing
    torch.manual_seed(3)
    model = nv.ViT3D(img_size=32, patch_size=8, width=32, depth=2, heads=2)
    loaded = nv.load_checkpoint(
        nv.save_checkpoint(tmp_path / "m.safetensors", model, ModelSpec(spec_input, ("a", "b"), "blocks.1.norm1"))
    )
    iso = blob((32, 32, 32), (1.0, 1.0, 1.0))
    coarse = blob((16, 32, 32), (2.0, 1.0, 1.0))
    iso_affine = np.eye(4)
    coarse_affine = np.diag([2.0, 1.0, 1.0, 1.0])
    # store the coarse scan with its axes permuted (z, x, y) and x flipped
    stored = np.transpose(coarse, (2, 0, 1))[:, ::-1, :]
    stored_affine = np.zeros((4, 4))
    stored_affine[:3, 0] = coarse_affine[:3, 2]
    stored_affine[:3, 1] = -coarse_affine[:3, 0]
    stored_affine[:3, 2] = coarse_affine[:3, 1]
    stored_affine[:3, 3] = coarse_affine[:3, 0] * 15
    stored_affine[3, 3] = 1
    a = nv.explain_volume(loaded, iso, affine=iso_affine, class_idx=1, device="cpu")
    b = nv.explain_volume(loaded, stored, affine=stored_affine, class_idx=1, device="cpu")
    assert a.heatmap.shape == iso.shape and b.heatmap.shape == stored.shape
    assert b.preprocessing["reorientation"] == {"order": [1, 2, 0], "flips": [True, False, False]}
    # the coarse map back in its RAS grid (x every 2 mm), and the iso map resampled there
    b_ras = np.transpose(b.heatmap[:, ::-1, :], (1, 2, 0))
    a_on_b = ndimage.map_coordinates(a.heatmap, np.meshgrid(np.arange(16) * 2.0, *[np.arange(32)] * 2, indexing="ij"))
    assert a.raw_max > 0 and b.raw_max > 0
    assert np.corrcoef(a_on_b.ravel(), b_ras.ravel())[0, 1] >= 0.99


def test_a_declared_spacing_without_geometry_is_said_in_one_line(spaced):
    volume = np.random.default_rng(4).normal(size=(16, 16, 16)).astype(np.float32)
    result = nv.explain_volume(spaced, volume, device="cpu")
    note = result.preprocessing["frame_note"]
    assert note.startswith("the model expects RAS-oriented and 1.5×1×2 mm spacing volumes") and "\n" not in note
    assert "geometry is unknown" in note
    np.testing.assert_array_equal(model_input(spaced, volume, device="cpu")[0, 0].numpy(), volume)


def test_the_spec_frame_is_used_unless_a_frame_is_given(spaced):
    volume = np.random.default_rng(5).normal(size=(12, 20, 9)).astype(np.float32)
    affine = AFFINES["permuted and flipped"]
    from_spec = nv.explain_volume(spaced, volume, affine=affine, device="cpu")
    assert from_spec.preprocessing["frame"] == "RAS" and from_spec.preprocessing["model_spacing_mm"] == list(SPACING)
    given = nv.explain_volume(spaced, volume, affine=affine, device="cpu", frame=ModelFrame("LPS"))
    assert given.preprocessing["frame"] == "LPS" and given.preprocessing["model_spacing_mm"] is None
    assert given.heatmap.shape == volume.shape


def test_old_specs_explain_as_before(tmp_path):
    """A spec without the new fields: no frame, plain resize, same input as the resize alone."""
    loaded = _save(tmp_path, InputSpec(1, SIZE, Normalization("zscore")))
    assert (loaded.spec.input.orientation, loaded.spec.input.spacing, loaded.spec.input.fit) == (None, None, "resize")
    volume = np.random.default_rng(6).normal(size=(10, 24, 20)).astype(np.float32)
    plain = model_input(loaded, volume, device="cpu")
    with_affine = model_input(loaded, volume, affine=np.diag([-1.0, 2.0, 3.0, 1.0]), device="cpu")
    torch.testing.assert_close(plain, with_affine, rtol=0, atol=0)
    normalised = (volume - volume.mean()) / volume.std()
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(normalised)[None, None], size=SIZE, mode="trilinear", align_corners=False
    )
    torch.testing.assert_close(plain, resized, atol=1e-5, rtol=1e-5)
    assert "frame_note" not in nv.explain_volume(loaded, volume, device="cpu").preprocessing


@pytest.mark.parametrize("method", ["rollout", "occlusion", "scorecam"])
def test_every_method_maps_back_onto_the_source_grid(spaced, method):
    """Attention and perturbation methods too: the map is made from their token map, cropped voxels get 0."""
    affine = AFFINES["permuted and flipped"]
    volume = np.random.default_rng(7).normal(size=(30, 20, 9)).astype(np.float32)
    result = nv.explain_volume(spaced, volume, affine=affine, device="cpu", method=method, upsample="patch")
    assert result.heatmap.shape == volume.shape and np.isfinite(result.heatmap).all()
    _, model_affine = monai_input(volume, affine)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij"), -1).reshape(-1, 3)
    m = (np.c_[index, np.ones(len(index))] @ affine.T @ np.linalg.inv(model_affine).T)[:, :3] + 0.5
    seen = np.all((m >= 0) & (m < np.array(SIZE)), axis=1)
    tokens = np.floor(m[seen] / 8).astype(int)
    expected = np.zeros(len(index), dtype=np.float32)
    expected[seen] = result.token_cam[tokens[:, 0], tokens[:, 1], tokens[:, 2]] / result.raw_max
    np.testing.assert_allclose(result.heatmap.reshape(-1), expected, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_resampling_runs_on_the_device_and_agrees_with_the_cpu(spaced):
    volume = np.random.default_rng(8).normal(size=(30, 20, 9)).astype(np.float32)
    affine = AFFINES["oblique"]
    on_gpu = model_input(spaced, volume, affine=affine, device="cuda")
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), model_input(spaced, volume, affine=affine, device="cpu"))
    gpu = nv.explain_volume(spaced, volume, affine=affine, device="cuda")
    cpu = nv.explain_volume(spaced, volume, affine=affine, device="cpu")
    np.testing.assert_allclose(gpu.heatmap, cpu.heatmap, atol=1e-3)


@pytest.mark.parametrize(
    ("affine", "expected"),
    [
        (np.eye(3), "the affine must be a finite 4x4 matrix"),
        (np.diag([1.0, np.nan, 1.0, 1.0]), "the affine must be a finite 4x4 matrix"),
        (np.diag([1.0, 0.0, 1.0, 1.0]), "fewer than 3 directions"),
    ],
)
def test_a_wrong_affine_is_refused_in_one_line(spaced, vit, affine, expected):
    from napari_vitcam.core.errors import InputError
    from napari_vitcam.models.loaded_model import LoadedModel
    from napari_vitcam.models.spec import InputSpec, ModelSpec, Normalization

    with pytest.raises(InputError, match=expected):
        nv.explain_volume(spaced, np.zeros((8, 8, 8), np.float32), affine=affine, device="cpu")
    no_frame = LoadedModel(vit, ModelSpec(InputSpec(1, (16, 16, 16), Normalization("none")), ("a", "b"), "norm"))
    assert no_frame.spec.input.orientation is None and no_frame.spec.input.spacing is None
    with pytest.raises(InputError, match=expected):  # refused even where the model would not use it
        nv.explain_volume(no_frame, np.zeros((8, 8, 8), np.float32), affine=affine, device="cpu")
