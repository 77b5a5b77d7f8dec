"""Choosing what to explain from napari layers: eligibility, 4D handling, one-line errors."""

import numpy as np
import pytest
from napari.components import ViewerModel
from napari.layers import Image, Labels

from napari_vitcam._napari.layer_input import check_volume_layer, is_volume_layer, select_volume, volume_layers
from napari_vitcam.core.errors import InputError


def test_only_images_with_three_spatial_dimensions_are_volumes():
    layers = [
        Image(np.zeros((8, 9, 10)), name="volume"),
        Image(np.zeros((3, 8, 9, 10)), name="series"),
        Image(np.zeros((8, 9)), name="slice"),
        Image(np.zeros((8, 9, 10, 3)), rgb=True, name="rgb stack"),
        Image(np.zeros((8, 9, 3)), rgb=True, name="rgb"),
        Labels(np.zeros((8, 9, 10), dtype=np.uint8), name="mask"),
    ]
    assert [layer.name for layer in volume_layers(layers)] == ["volume", "series"]
    assert is_volume_layer(layers[0]) and not is_volume_layer(layers[3])


@pytest.mark.parametrize(
    ("layer", "words"),
    [
        (Image(np.zeros((8, 9)), name="slice"), "2D"),
        (Image(np.zeros((8, 9, 10, 3)), rgb=True, name="rgb stack"), "RGB"),
        (Labels(np.zeros((8, 9, 10), dtype=np.uint8), name="mask"), "labels layer"),
    ],
)
def test_unusable_layers_raise_one_line_errors(layer, words):
    with pytest.raises(InputError, match=words) as caught:
        check_volume_layer(layer)
    message = str(caught.value)
    assert "\n" not in message and ":" in message and repr(layer.name) in message


def test_a_3d_layer_is_read_whole():
    data = np.arange(8 * 9 * 10, dtype=np.float32).reshape(8, 9, 10)
    selection = select_volume(Image(data, name="v"), channels=1)
    assert selection.fixed == () and selection.channel_axis is None
    assert selection.read(data) is not None and np.array_equal(selection.read(data), data)
    heatmap = np.ones((8, 9, 10), dtype=np.float32)
    assert selection.embed(heatmap) is heatmap


def test_a_4d_layer_uses_the_time_point_shown():
    viewer = ViewerModel()
    data = np.random.default_rng(0).random((5, 8, 9, 10)).astype(np.float32)
    layer = viewer.add_image(data, scale=(2.0, 1.0, 1.0, 1.0), translate=(10.0, 0, 0, 0))
    viewer.dims.set_point(0, 10.0 + 2.0 * 3)  # time point 3 in world units
    selection = select_volume(layer, channels=1, world_point=viewer.dims.point)
    assert selection.fixed == ((0, 3),)
    assert np.array_equal(selection.read(data), data[3])
    full = selection.embed(np.ones((8, 9, 10), dtype=np.float32))
    assert full.shape == data.shape
    assert full[3].min() == 1 and full[[0, 1, 2, 4]].max() == 0


def test_a_4d_layer_uses_its_channel_axis_when_the_model_takes_that_many_channels():
    viewer = ViewerModel()
    data = np.zeros((2, 8, 9, 10), dtype=np.float32)
    layer = viewer.add_image(data)
    selection = select_volume(layer, channels=2, world_point=viewer.dims.point)
    assert selection.channel_axis == 0 and selection.fixed == ()
    assert selection.read(data).shape == (2, 8, 9, 10)
    full = selection.embed(np.full((8, 9, 10), 0.5, dtype=np.float32))
    assert full.shape == data.shape and np.all(full == 0.5)


def test_a_5d_layer_keeps_the_channel_axis_and_fixes_time():
    viewer = ViewerModel()
    data = np.zeros((4, 3, 6, 7, 8), dtype=np.float32)
    layer = viewer.add_image(data)
    viewer.dims.set_point(0, 2)
    selection = select_volume(layer, channels=3, world_point=viewer.dims.point)
    assert selection.channel_axis == 1 and selection.fixed == ((0, 2),)
    assert selection.read(data).shape == (3, 6, 7, 8)


def test_a_wrong_channel_count_is_a_one_line_error():
    with pytest.raises(InputError, match="takes 2 channels") as caught:
        select_volume(Image(np.zeros((8, 9, 10)), name="v"), channels=2)
    assert "\n" not in str(caught.value)
    with pytest.raises(InputError, match="takes 3 channels"):
        select_volume(Image(np.zeros((2, 8, 9, 10)), name="v"), channels=3)


def test_multiscale_layers_use_their_full_resolution_level():
    levels = [np.zeros((16, 16, 16), dtype=np.float32), np.zeros((8, 8, 8), dtype=np.float32)]
    layer = Image(levels, multiscale=True, name="pyramid")
    selection = select_volume(layer, channels=1)
    assert selection.data_shape == (16, 16, 16)
