"""The napari world (S, P, L) in mm, and axis orders: the same points whatever order a file stores its axes in."""

import itertools

import numpy as np
import pytest

from napari_vitcam.testing.scans import oblique_affine
from napari_vitcam.volumes.geometry import (
    RAS_TO_WORLD,
    WORLD_TO_RAS,
    closest_axes,
    layer_geometry,
    nifti_geometry,
    permuted,
)


def apply(affine, index):
    return (affine @ np.r_[np.asarray(index, float), 1.0])[:3]


def test_the_world_is_lps_reversed():
    # a point 10 mm right, 20 mm anterior, 30 mm superior (RAS) is at S=30, P=-20, L=-10
    np.testing.assert_allclose(apply(RAS_TO_WORLD, (10, 20, 30)), (30, -20, -10))
    np.testing.assert_allclose(WORLD_TO_RAS @ RAS_TO_WORLD, np.eye(4))


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_any_stored_axis_order_gives_the_same_layer(order):
    base = oblique_affine((2.5, 0.9, 0.7), 10.0, flip=2)
    array = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    stored = np.transpose(array, order)
    stored_affine = permuted(base, order)
    reference = layer_geometry(base)
    geometry = layer_geometry(stored_affine)
    np.testing.assert_array_equal(np.transpose(stored, geometry.order), np.transpose(array, reference.order))
    np.testing.assert_allclose(geometry.affine, reference.affine)


def test_a_layer_is_nearly_diagonal_in_the_world_so_napari_can_slice_it():
    geometry = layer_geometry(oblique_affine((3.0, 0.8, 0.8), 15.0, flip=1))
    linear = geometry.affine[:3, :3]
    cosines = np.abs(linear) / np.linalg.norm(linear, axis=0)
    assert np.all(np.diag(cosines) > 0.9)


def test_each_voxel_keeps_its_world_point():
    affine = oblique_affine((3.0, 0.8, 0.8), 15.0, flip=1)
    geometry = layer_geometry(affine)
    for index in itertools.product((0, 3), (0, 5), (0, 7)):
        layer_index = [index[axis] for axis in geometry.order]
        np.testing.assert_allclose(apply(WORLD_TO_RAS @ geometry.affine, layer_index), apply(affine, index))


@pytest.mark.parametrize("flip", [None, 0, 1, 2])
def test_writing_a_layer_back_as_nifti_restores_a_ras_ordered_files_affine(flip):
    affine = oblique_affine((3.0, 0.8, 1.1), 20.0, flip=flip)
    assert closest_axes(affine[:3, :3]) == (0, 1, 2)
    geometry = layer_geometry(affine)
    order, written = nifti_geometry(geometry.affine)
    np.testing.assert_allclose(written, affine, atol=1e-12)
    array = np.arange(24).reshape(2, 3, 4)
    np.testing.assert_array_equal(np.transpose(np.transpose(array, geometry.order), order), array)


def test_the_world_view_is_a_read_only_view_and_maps_back_to_the_file_order():
    from napari_vitcam.volumes.geometry import world_view

    affine = permuted(oblique_affine((2.0, 0.8, 1.2), 10.0, flip=0), (1, 2, 0))
    array = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    array.flags.writeable = False
    view = world_view(array, affine)
    assert view.order != (0, 1, 2) and np.shares_memory(view.array, array) and not view.array.flags.writeable
    np.testing.assert_array_equal(view.to_file(view.array), array)
    assert world_view(array, None).array is array and world_view(array, None).affine is None
