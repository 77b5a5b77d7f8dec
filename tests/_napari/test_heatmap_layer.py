"""The heatmap layer: name, look, metadata, exact overlay, replace versus keep (no Qt needed)."""

import json
from pathlib import Path

import numpy as np
import pytest
from napari.components import ViewerModel
from torch import nn

from napari_vitcam._napari import heatmap_layer
from napari_vitcam._napari.layer_input import select_volume
from napari_vitcam.models.loaded_model import LoadedModel
from napari_vitcam.models.spec import ModelSpec
from napari_vitcam.pipeline.explain import VolumeExplanation

CLASSES = ("healthy", "lesion", "cyst")


def explanation(heatmap, *, class_idx=1, target="blocks.4.norm1", method="gradcam"):
    return VolumeExplanation(
        heatmap=heatmap,
        raw_max=2.5,
        predicted_class=1,
        class_idx=class_idx,
        probabilities=np.array([0.1, 0.7, 0.2], dtype=np.float32),
        class_names=CLASSES,
        target_layer=target,
        method=method,
        upsample="smooth",
        device="cpu",
        token_cam=np.zeros((2, 2, 2), dtype=np.float32),
        preprocessing={"normalization": "zscore", "volume_shape": list(heatmap.shape)},
        timings={"forward": 0.1, "backward": 0.05},
    )


LOADED = LoadedModel(
    nn.Identity(), ModelSpec(class_names=CLASSES), Path("/models/lesion.safetensors"), {"lesion.safetensors": "ab" * 32}
)


def show(viewer, heatmaps, source, result, *, keep=False):
    selection = select_volume(source, channels=1, world_point=viewer.dims.point)
    metadata = heatmap_layer.heatmap_metadata(
        result, LOADED, source, selection, requested_class="predicted", timings={"load": 0.2, **result.timings}
    )
    name = heatmap_layer.heatmap_name(result)
    return heatmaps.show(viewer.layers, source, selection, result.heatmap, name, metadata, keep_previous=keep)


def hot_spot(shape, where):
    heatmap = np.zeros(shape, dtype=np.float32)
    heatmap[where] = 1.0
    return heatmap


def test_name_and_appearance():
    viewer = ViewerModel()
    heatmaps = heatmap_layer.HeatmapLayers()
    source = viewer.add_image(np.zeros((6, 7, 8), dtype=np.float32), name="scan")
    layer = show(viewer, heatmaps, source, explanation(np.zeros((6, 7, 8), dtype=np.float32)))
    assert layer.name == "Grad-CAM · lesion · blocks.4.norm1"
    assert layer.colormap.name in ("turbo", "inferno")
    assert layer.blending == "additive"
    assert layer.opacity == pytest.approx(0.5)
    assert tuple(layer.contrast_limits) == (0.0, 1.0)
    assert layer.rendering in ("attenuated_mip", "mip")
    assert viewer.layers[-1] is layer


def test_metadata_reproduces_the_figure_and_is_json():
    viewer = ViewerModel()
    heatmaps = heatmap_layer.HeatmapLayers()
    source = viewer.add_image(np.zeros((6, 7, 8), dtype=np.float32), name="scan")
    metadata = show(viewer, heatmaps, source, explanation(np.zeros((6, 7, 8), dtype=np.float32))).metadata
    assert metadata["method"] == "gradcam" and metadata["target_layer"] == "blocks.4.norm1"
    assert metadata["class_name"] == "lesion" and metadata["requested_class"] == "predicted"
    assert metadata["probabilities"] == pytest.approx({"lesion": 0.7, "cyst": 0.2, "healthy": 0.1})
    assert list(metadata["probabilities"]) == ["lesion", "cyst", "healthy"]
    assert metadata["checkpoint"] == "/models/lesion.safetensors"
    assert metadata["checkpoint_sha256"] == {"lesion.safetensors": "ab" * 32}
    assert metadata["preprocessing"]["normalization"] == "zscore"
    assert metadata["raw_max"] == 2.5
    assert set(metadata["timings"]) >= {"load", "forward", "backward"}
    assert metadata["source_layer"] == "scan"
    json.dumps(metadata)


@pytest.mark.parametrize(
    "transforms",
    [
        {"scale": (2.5, 0.7, 1.3), "translate": (-12.0, 40.0, 3.5)},
        {
            "scale": (3.0, 1.0, 0.5),
            "translate": (1.0, 2.0, 3.0),
            "rotate": 30,
            "shear": (0.1, 0.0, 0.2),
            "units": ("mm", "um", "um"),
        },
        {"affine": np.array([[1.0, 0, 0, 5], [0, 0.8, 0.2, -3], [0, 0, 1.5, 7], [0, 0, 0, 1]])},
    ],
)
def test_a_known_hot_spot_lands_on_the_same_world_coordinate(transforms):
    viewer = ViewerModel()
    heatmaps = heatmap_layer.HeatmapLayers()
    shape, where = (10, 12, 14), (7, 2, 11)
    source = viewer.add_image(np.zeros(shape, dtype=np.float32), name="scan", **transforms)
    layer = show(viewer, heatmaps, source, explanation(hot_spot(shape, where)))
    assert layer.data.shape == source.data.shape
    peak = np.unravel_index(np.argmax(layer.data), layer.data.shape)
    np.testing.assert_allclose(layer.data_to_world(peak), source.data_to_world(where), atol=1e-9)
    np.testing.assert_allclose(layer.affine.affine_matrix, source.affine.affine_matrix)
    assert layer.units == source.units
    np.testing.assert_allclose(layer.extent.world, source.extent.world)


def test_a_time_series_heatmap_lands_on_the_time_point_shown():
    viewer = ViewerModel()
    heatmaps = heatmap_layer.HeatmapLayers()
    source = viewer.add_image(np.zeros((4, 6, 7, 8), dtype=np.float32), scale=(1, 2, 2, 2), translate=(0, 5, 5, 5))
    viewer.dims.set_point(0, 2)
    layer = show(viewer, heatmaps, source, explanation(hot_spot((6, 7, 8), (1, 2, 3))))
    assert layer.data.shape == (4, 6, 7, 8)
    peak = np.unravel_index(np.argmax(layer.data), layer.data.shape)
    assert peak == (2, 1, 2, 3)
    np.testing.assert_allclose(layer.data_to_world(peak), source.data_to_world((2, 1, 2, 3)))
    assert layer.metadata["selection"]["fixed_axes"] == {"0": 2}


def test_running_again_replaces_the_same_key_and_keep_previous_adds():
    viewer = ViewerModel()
    heatmaps = heatmap_layer.HeatmapLayers()
    source = viewer.add_image(np.zeros((6, 7, 8), dtype=np.float32), name="scan")
    first = show(viewer, heatmaps, source, explanation(np.zeros((6, 7, 8), dtype=np.float32)))
    second = show(viewer, heatmaps, source, explanation(np.ones((6, 7, 8), dtype=np.float32)))
    assert second is first and len(viewer.layers) == 2
    assert first.data.max() == 1.0
    kept = show(viewer, heatmaps, source, explanation(np.ones((6, 7, 8), dtype=np.float32)), keep=True)
    assert kept is not first and len(viewer.layers) == 3
    other_class = show(viewer, heatmaps, source, explanation(np.ones((6, 7, 8), dtype=np.float32), class_idx=2))
    other_block = show(viewer, heatmaps, source, explanation(np.ones((6, 7, 8), dtype=np.float32), target="blocks.3"))
    other_method = show(viewer, heatmaps, source, explanation(np.ones((6, 7, 8), dtype=np.float32), method="hirescam"))
    assert len(viewer.layers) == 6
    assert other_class.name == "Grad-CAM · cyst · blocks.4.norm1"
    assert other_block.name == "Grad-CAM · lesion · blocks.3"
    assert other_method.name == "HiResCAM · lesion · blocks.4.norm1"


def test_another_source_layer_gets_its_own_heatmap():
    viewer = ViewerModel()
    heatmaps = heatmap_layer.HeatmapLayers()
    a = viewer.add_image(np.zeros((6, 7, 8), dtype=np.float32), name="scan")
    b = viewer.add_image(np.zeros((6, 7, 8), dtype=np.float32), name="scan")
    first = show(viewer, heatmaps, a, explanation(np.zeros((6, 7, 8), dtype=np.float32)))
    second = show(viewer, heatmaps, b, explanation(np.zeros((6, 7, 8), dtype=np.float32)))
    assert first is not second and heatmap_layer.is_heatmap(first) and not heatmap_layer.is_heatmap(a)


def duplicate(viewer, layer):
    """What napari's Duplicate Layer does."""
    from napari.layers._layer_actions import _duplicate_layer

    viewer.layers.selection.active = layer
    _duplicate_layer(viewer.layers)
    return viewer.layers[viewer.layers.index(layer) + 1]


def test_a_duplicated_and_edited_heatmap_is_never_written_into_or_renamed():
    viewer = ViewerModel()
    heatmaps = heatmap_layer.HeatmapLayers()
    source = viewer.add_image(np.zeros((6, 7, 8), dtype=np.float32), name="scan")
    ours = show(viewer, heatmaps, source, explanation(hot_spot((6, 7, 8), (1, 1, 1))))
    copy = duplicate(viewer, ours)
    assert copy.metadata == ours.metadata  # the same key: metadata cannot tell them apart
    copy.data[2, 2, 2] = 0.5  # the user edits their copy
    copy.name = "my edit"
    edited = copy.data.copy()
    viewer.layers.move(viewer.layers.index(copy), len(viewer.layers))  # topmost
    again = show(viewer, heatmaps, source, explanation(hot_spot((6, 7, 8), (4, 4, 4))))
    assert again is ours and copy.name == "my edit"
    np.testing.assert_array_equal(copy.data, edited)
    assert ours.data[4, 4, 4] == 1.0 and ours.data[1, 1, 1] == 0.0
    viewer.layers.remove(ours)  # only the user's copy is left: a rerun adds a layer of its own
    third = show(viewer, heatmaps, source, explanation(hot_spot((6, 7, 8), (5, 5, 5))))
    assert third is not copy and third in viewer.layers and copy.name == "my edit"
    np.testing.assert_array_equal(copy.data, edited)


@pytest.mark.parametrize("change", ["rename", "new data", "move"])
def test_a_heatmap_the_user_renamed_gave_data_or_moved_is_theirs(change):
    viewer = ViewerModel()
    heatmaps = heatmap_layer.HeatmapLayers()
    source = viewer.add_image(np.zeros((6, 7, 8), dtype=np.float32), name="scan")
    ours = show(viewer, heatmaps, source, explanation(hot_spot((6, 7, 8), (1, 1, 1))))
    generated = ours.name
    if change == "rename":
        ours.name = "lesion map for the report"
    elif change == "new data":
        ours.data = ours.data * 0.5
    else:
        ours.translate = (0.0, 3.0, 0.0)
    name, data, translate = ours.name, ours.data.copy(), tuple(ours.translate)
    again = show(viewer, heatmaps, source, explanation(hot_spot((6, 7, 8), (4, 4, 4))))
    assert again is not ours and len(viewer.layers) == 3
    assert ours.name == name and tuple(ours.translate) == translate
    np.testing.assert_array_equal(ours.data, data)
    assert again.name.startswith(generated) and again.data[4, 4, 4] == 1.0
    assert show(viewer, heatmaps, source, explanation(hot_spot((6, 7, 8), (2, 2, 2)))) is again  # ours now


def test_a_time_series_keeps_the_maps_of_other_time_points():
    viewer = ViewerModel()
    heatmaps = heatmap_layer.HeatmapLayers()
    source = viewer.add_image(np.zeros((4, 6, 7, 8), dtype=np.float32), name="series")
    viewer.dims.set_point(0, 2)
    layer = show(viewer, heatmaps, source, explanation(hot_spot((6, 7, 8), (1, 2, 3))))
    viewer.dims.set_point(0, 0)
    again = show(viewer, heatmaps, source, explanation(hot_spot((6, 7, 8), (4, 5, 6))))
    assert again is layer and layer.data.shape == (4, 6, 7, 8)
    assert layer.data[2, 1, 2, 3] == 1.0 and layer.data[0, 4, 5, 6] == 1.0  # t=2 survived the run at t=0
    assert layer.data[1].max() == 0.0 and layer.data[3].max() == 0.0
    assert layer.metadata["explained"] == [{"0": 2}, {"0": 0}]
    viewer.dims.set_point(0, 2)
    show(viewer, heatmaps, source, explanation(hot_spot((6, 7, 8), (0, 0, 0))))  # a rerun at t=2 replaces t=2 only
    assert layer.data[2, 1, 2, 3] == 0.0 and layer.data[2, 0, 0, 0] == 1.0 and layer.data[0, 4, 5, 6] == 1.0
    assert layer.metadata["explained"] == [{"0": 0}, {"0": 2}]
