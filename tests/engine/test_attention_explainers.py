"""Attention rollout and gradient-weighted relevance: hand-computed cases, the full T x T chain, real models."""

import pytest
import torch

import napari_vitcam as nv
from napari_vitcam.engine.dispatch import readout_from_gradient
from napari_vitcam.engine.explainers import AttentionInputs, get_explainer
from napari_vitcam.engine.token_grid import TokenGrid
from napari_vitcam.testing.thirdparty import monai_vit, vit_pytorch_simple_vit, vit_pytorch_vit

GRID3 = TokenGrid((1, 1, 2), (4.0, 4.0, 4.0), (4, 4, 8))


def test_rollout_by_hand_on_a_cls_and_two_tokens():
    # one head, one block: rollout row of cls = 0.5 * A[0] + 0.5 * e_0
    a = torch.tensor([[[[0.5, 0.25, 0.25], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]]])
    readout = torch.tensor([[1.0, 0.0, 0.0]])
    inputs = AttentionInputs([a], None, 1, readout, GRID3)
    torch.testing.assert_close(get_explainer("rollout").token_map(inputs), torch.tensor([[0.125, 0.125]]))
    # two blocks, the cls token reading token 1 only in block 2:
    a2 = torch.tensor([[[[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]]])
    inputs = AttentionInputs([a, a2], None, 1, readout, GRID3)
    # after block 2: v = 0.5*(0, 1, 0) + 0.5*(1, 0, 0) = (0.5, 0.5, 0)
    # through block 1: v @ a = (0.25, 0.625, 0.125); 0.5 * that + 0.5 * v = (0.375, 0.5625, 0.0625)
    expected = torch.tensor([[0.5625, 0.0625]])
    torch.testing.assert_close(get_explainer("rollout").token_map(inputs), expected)


def test_relevance_by_hand_on_a_cls_and_two_tokens():
    a = torch.tensor([[[[0.5, 0.25, 0.25], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]]])
    g = torch.tensor([[[[1.0, 4.0, -4.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]])
    readout = torch.tensor([[1.0, 0.0, 0.0]])
    inputs = AttentionInputs([a], [g], 1, readout, GRID3)
    # relu(g * a) row 0 = (0.5, 1.0, 0); R row 0 = e_0 + (0.5, 1, 0) -> tokens (1, 0)
    torch.testing.assert_close(get_explainer("relevance").token_map(inputs), torch.tensor([[1.0, 0.0]]))


def full_chain_rollout(attentions, readout, prefix):
    t = attentions[0].shape[-1]
    eye = torch.eye(t, dtype=torch.float64)
    rollout = eye.expand(attentions[0].shape[0], t, t)
    for a in attentions:
        rollout = (0.5 * a.double().mean(1) + 0.5 * eye) @ rollout
    return torch.einsum("bt,bts->bs", readout.double(), rollout)[:, prefix:]


def full_chain_relevance(attentions, gradients, readout, prefix):
    """Chefer et al.'s rule as their code writes it: R = I; R += mean_h((grad * A)^+) @ R per block."""
    t = attentions[0].shape[-1]
    relevance = torch.eye(t, dtype=torch.float64).expand(attentions[0].shape[0], t, t)
    for a, g in zip(attentions, gradients, strict=True):
        cam = (g.double() * a.double()).clamp(min=0).mean(1)
        relevance = relevance + cam @ relevance
    return torch.einsum("bt,bts->bs", readout.double(), relevance)[:, prefix:]


@pytest.mark.parametrize("prefix", [0, 1, 2])
def test_vector_products_equal_the_full_chain_batched_multi_head(prefix):
    g = torch.Generator().manual_seed(3)
    batch, heads, depth, grid = 3, 4, 5, TokenGrid((2, 2, 3), (1.0, 1.0, 1.0), (2, 2, 3))
    t = prefix + grid.n_tokens
    attentions = [torch.randn(batch, heads, t, t, generator=g).softmax(-1) for _ in range(depth)]
    gradients = [torch.randn(batch, heads, t, t, generator=g) for _ in range(depth)]
    readout = torch.zeros(batch, t)
    readout[0, 0] = 1.0  # a cls token
    readout[1] = 1.0 / t  # a head that reads the mean of every token
    readout[2, prefix:] = 1.0 / grid.n_tokens  # ... of the grid tokens only
    inputs = AttentionInputs(attentions, gradients, prefix, readout, grid)
    rollout = get_explainer("rollout").token_map(inputs)
    relevance = get_explainer("relevance").token_map(inputs)
    assert rollout.shape == relevance.shape == (batch, grid.n_tokens)
    torch.testing.assert_close(rollout.double(), full_chain_rollout(attentions, readout, prefix), atol=1e-6, rtol=1e-5)
    expected = full_chain_relevance(attentions, gradients, readout, prefix)
    torch.testing.assert_close(relevance.double(), expected, atol=1e-5, rtol=1e-5)


def test_readout_is_the_rows_the_score_depends_on():
    gradient = torch.zeros(2, 2, 4, 4)
    gradient[0, 1, 0, 2] = 0.5  # sample 0: only the cls row matters
    gradient[1, :, :, 1] = -1.0  # sample 1: every row matters (a pooled head)
    torch.testing.assert_close(
        readout_from_gradient(gradient), torch.tensor([[1.0, 0, 0, 0], [0.25, 0.25, 0.25, 0.25]])
    )
    with pytest.raises(nv.DegenerateTargetError, match="does not depend on the last attention"):
        readout_from_gradient(torch.zeros(1, 2, 4, 4))


def test_relevance_on_vit3d_equals_an_independent_full_chain_from_its_exposed_probabilities():
    torch.manual_seed(0)
    model = nv.ViT3D(img_size=16, patch_size=4, width=32, depth=3, heads=2).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    result = nv.explain_tokens(model, x, "relevance", class_idx=[1, 0])
    rollout = nv.explain_tokens(model, x, "rollout", class_idx=[1, 0])
    # the reference: the model's own explicit attention path, read at attn.probs, full T x T chain
    model.set_expose_attention(True)
    seen = []
    handles = [b.attn.probs.register_forward_hook(lambda m, i, o: seen.append(o)) for b in model.blocks]
    logits = model(x)
    for h in handles:
        h.remove()
    score = logits[0, 1] + logits[1, 0]
    grads = torch.autograd.grad(score, seen)
    readout = torch.zeros(2, 65)
    readout[:, 0] = 1.0
    expected = full_chain_relevance(seen, grads, readout, 1).reshape(2, 4, 4, 4)
    torch.testing.assert_close(result.token_cam.double(), expected, atol=1e-5, rtol=1e-4)
    expected = full_chain_rollout(seen, readout, 1).reshape(2, 4, 4, 4)
    torch.testing.assert_close(rollout.token_cam.double(), expected, atol=1e-6, rtol=1e-5)
    assert result.cam.shape == (2, 16, 16, 16) and result.layout.prefix == 1
    assert result.class_idx.tolist() == [1, 0] and len(result.attention_layers) == 3


@pytest.mark.parametrize(
    ("build", "prefix"),
    [(vit_pytorch_vit, 1), (vit_pytorch_simple_vit, 0), (monai_vit, 1), (lambda: vit_pytorch_vit(pool="mean"), 1)],
)
def test_third_party_models_explained_batched_with_grid_and_prefix_from_the_model(build, prefix):
    torch.manual_seed(1)
    model = build()
    x = torch.randn(3, 1, 16, 16, 16)
    for method in ("rollout", "relevance"):
        result = nv.explain_tokens(model, x, method)
        assert result.token_cam.shape == (3, 4, 4, 4) and result.layout.prefix == prefix
        assert bool(torch.isfinite(result.cam).all()) and bool((result.token_cam > 0).any())
        # one sample alone gives the same map as inside the batch
        alone = nv.explain_tokens(model, x[1:2], method, class_idx=int(result.class_idx[1]))
        torch.testing.assert_close(alone.token_cam[0], result.token_cam[1], atol=1e-5, rtol=1e-4)
