"""Localisation metrics on hand-made maps, and the shipped demo model on held-out volumes."""

import numpy as np
import pytest
import torch

from napari_vitcam.demo.evaluate import (
    RANDOM_BASELINE,
    block_targets,
    evaluate_blocks,
    load_demo_model,
    random_heatmap,
)
from napari_vitcam.demo.shipped import SHIPPED_CHECKPOINT, SHIPPED_CLS_CHECKPOINT, VALIDATION_SEED_START
from napari_vitcam.models.targets import method_for


def test_random_baseline_maps_differ_and_are_non_negative():
    generator = torch.Generator().manual_seed(0)
    maps = [random_heatmap((64, 64, 64), (8, 8, 8), generator) for _ in range(2)]
    assert maps[0].shape == (64, 64, 64) and maps[0].min() >= 0.0
    assert not np.allclose(maps[0], maps[1])


# ---------------------------------------------------------------- the shipped model


@pytest.fixture(scope="module")
def demo():
    assert SHIPPED_CHECKPOINT.exists(), "the demo checkpoint must ship with the package"
    torch.manual_seed(0)
    return load_demo_model()


def test_shipped_checkpoint_is_small_and_complete(demo):
    assert SHIPPED_CHECKPOINT.stat().st_size <= 5 * 1024 * 1024
    spec = demo.spec
    assert spec.class_names == ("solid", "ring")
    assert spec.target_layer in block_targets(demo.model)
    assert spec.input.normalization.kind == "zscore"
    assert tuple(demo.model.config.patch_size) == (8, 8, 8)


@pytest.fixture(scope="module")
def held_out(demo):
    # 40 held-out volumes: seeds far below the validation and training seeds.
    seeds = range(1000, 1040)
    assert seeds.stop <= VALIDATION_SEED_START
    return evaluate_blocks(
        demo.model,
        seeds,
        normalization=demo.spec.input.normalization,
        targets=[demo.spec.target_layer],
        batch=10,
    )


def test_demo_model_is_accurate(held_out):
    # The goal: 0.95 (the shipped model reaches 0.985 on 200 held-out volumes, 1.0 on these 40).
    assert held_out["_summary"]["accuracy"] >= 0.95


def test_heatmap_points_at_the_lesion_at_the_recommended_block(demo, held_out):
    row = held_out[demo.spec.target_layer]
    # The goal: the shipped model reaches 0.945 on 200 held-out volumes and 0.95 on these 40.
    assert row["pointing_tolerant"] >= 0.9
    # Far better than chance: a random map of the same resolution rarely hits the lesion.
    assert row["pointing_tolerant"] > held_out[RANDOM_BASELINE]["pointing_tolerant"] + 0.4
    assert row["mass"] > 2 * held_out[RANDOM_BASELINE]["mass"]


def test_removing_the_lesion_changes_the_decision(held_out):
    # Replacing the lesion with the tissue under it takes away at least half of the
    # predicted class's confidence above chance. The goal: on 0.9 of the volumes (the
    # shipped model: 0.915 on 200 held-out volumes, 0.95 on these 40; docs/evaluation.md).
    summary = held_out["_summary"]
    assert summary["occlusion_threshold"] == 0.5
    assert summary["occlusion_changed"] >= 0.9
    assert summary["occlusion_mean_drop"] > 0.3


def test_evaluation_with_another_cam_method(demo, held_out):
    target = demo.spec.target_layer
    seeds = range(1000, 1004)
    other = evaluate_blocks(
        demo.model,
        seeds,
        normalization=demo.spec.input.normalization,
        targets=[target],
        method="layercam",
        baseline=False,
    )
    same = evaluate_blocks(
        demo.model,
        seeds,
        normalization=demo.spec.input.normalization,
        targets=[target],
        baseline=False,
    )
    assert other["_summary"]["method"] == "layercam" and same["_summary"]["method"] == "gradcam"
    assert other[target]["mass"] != same[target]["mass"]  # a different map was measured
    assert other["_summary"]["accuracy"] == same["_summary"]["accuracy"]  # the same model and volumes


@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("pool", ["cls", "mean", "attn"])
def test_block_targets_of_the_reference_vit(pool, depth):
    from napari_vitcam.models.architectures.vit3d import ViT3D

    torch.manual_seed(0)
    model = ViT3D(img_size=16, patch_size=8, width=16, depth=depth, heads=2, pool=pool).eval()
    expected = [name for i in range(depth) for name in (f"blocks.{i}.norm1", f"blocks.{i}")]
    if pool == "cls":  # the last block's output has no gradient at the patch tokens, the final norm neither
        expected = expected[:-1]
    else:  # a pooled head reads the patch tokens through the final norm
        expected.append("norm")
    assert block_targets(model) == expected


# ---------------------------------------------------------------- the shipped cls-token model


@pytest.fixture(scope="module")
def cls_demo():
    assert SHIPPED_CLS_CHECKPOINT.exists(), "the cls-token demo checkpoint must ship with the package"
    return load_demo_model(SHIPPED_CLS_CHECKPOINT)


def test_the_cls_token_demo_gets_attention_rollout_by_default(cls_demo):
    assert cls_demo.model.config.pool == "cls" and cls_demo.spec.method is None
    assert method_for(cls_demo).method == "rollout"
    assert method_for(load_demo_model()).method == "gradcam"  # the pooled demo names the method it was validated with


def test_the_default_explainer_points_at_the_lesion_where_grad_cam_does_not(cls_demo):
    # The goal: 0.9 on held-out volumes (the shipped model: 0.93 on 200, seeds 0-199, docs/evaluation.md).
    seeds = range(1000, 1040)
    common = {"normalization": cls_demo.spec.input.normalization, "batch": 10, "baseline": False}
    default = evaluate_blocks(cls_demo.model, seeds, method=method_for(cls_demo).method, **common)
    gradcam = evaluate_blocks(cls_demo.model, seeds, targets=[cls_demo.spec.target_layer], **common)
    pointing = default["Attention rollout"]["pointing_tolerant"]
    assert default["_summary"]["accuracy"] >= 0.95
    assert pointing >= 0.9
    assert pointing >= gradcam[cls_demo.spec.target_layer]["pointing_tolerant"] + 0.3


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["-n", "0"], "-n/--volumes 0: give at least 1"),
        (["--start", "-5"], "--start -5: give a seed of 0 or more"),
        (["--occlusion-share", "5"], "--occlusion-share 5.0: give a share above 0 and at most 1"),
        (["--json", "{scan}"], "cannot write the results as scan.npy: end --json with .json"),
        (["--json", "{old}"], "old.json exists: choose another --json, or pass --force"),
        (["--checkpoint", "{tmp}/absent.safetensors"], "no file or folder at"),
        (["--targets", "nowhere"], "the model has no module named 'nowhere'"),
    ],
)
def test_evaluate_demo_refuses_bad_arguments_in_one_line(tmp_path, capsys, extra, expected):
    from napari_vitcam.demo.evaluate import main

    scan, old = tmp_path / "scan.npy", tmp_path / "old.json"
    np.save(scan, np.zeros(4, np.float32))
    old.write_text("{}")
    assert main(["-n", "1", *(a.format(scan=scan, old=old, tmp=tmp_path) for a in extra)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("napari-vitcam evaluate-demo: ") and expected in err and "\n" not in err
    assert old.read_text() == "{}" and np.load(scan).shape == (4,)  # the user's files are untouched
