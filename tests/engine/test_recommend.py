"""The default explainer follows what the model is: its head and whether its attention can be read."""

from napari_vitcam.engine.recommend import recommend_method
from napari_vitcam.engine.targets import TargetCandidate

CANDIDATES = [
    TargetCandidate("blocks.0.norm1", "norm1", False),
    TargetCandidate("blocks.1.norm1", "norm1", False, True),
]


def test_a_cls_token_transformer_gets_rollout_a_pooled_one_relevance_the_rest_grad_cam():
    assert recommend_method(CANDIDATES, True, 1).method == "rollout"
    assert recommend_method(CANDIDATES, True, 0).method == "relevance"
    fallback = recommend_method(CANDIDATES, False, 0)
    assert (fallback.method, fallback.target_layer) == ("gradcam", "blocks.1.norm1")
    assert all(recommend_method(CANDIDATES, a, p).reason for a in (True, False) for p in (0, 1))
