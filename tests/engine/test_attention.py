"""Attention probabilities are found by probing the model: MONAI, vit-pytorch, ViT3D and SDPA."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import napari_vitcam as nv
from napari_vitcam.engine.attention import capture_attention, explicit_attention, is_attention
from napari_vitcam.testing.thirdparty import monai_vit, vit_pytorch_simple_vit, vit_pytorch_vit


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def vit3d(expose: bool = False) -> nn.Module:
    model = nv.ViT3D(img_size=16, patch_size=4, width=32, depth=3, heads=2)
    model.set_expose_attention(expose)
    return model


MODELS = {
    # name: (builder, blocks, tokens, where the attention is read)
    "monai": (lambda: monai_vit(depth=3), 3, 65, "attn.drop_weights (input)"),
    "monai-sdpa": (lambda: monai_vit(depth=3, flash=True), 3, 65, "attn (scaled_dot_product_attention)"),
    "vit-pytorch": (lambda: vit_pytorch_vit(depth=3), 3, 65, ".0.attend (output)"),
    "simple-vit": (lambda: vit_pytorch_simple_vit(depth=3), 3, 64, ".0.attend (output)"),
    "vit3d-sdpa": (vit3d, 3, 65, "attn (scaled_dot_product_attention)"),
    "vit3d-probs": (lambda: vit3d(expose=True), 3, 65, "attn.probs (input)"),
}


def logits_of(output):
    return output[0] if isinstance(output, tuple) else output


@pytest.mark.parametrize("name", list(MODELS))
def test_every_block_attention_is_found_and_the_model_output_is_unchanged(name):
    build, blocks, tokens, where = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        reference = logits_of(model(x))
    sdpa = F.scaled_dot_product_attention
    with capture_attention(model, batch=2) as found:
        output = logits_of(model(x))
    assert F.scaled_dot_product_attention is sdpa and hook_count(model) == 0
    torch.testing.assert_close(output, reference, atol=1e-5, rtol=1e-5)
    assert len(found) == blocks
    assert [a.block for a in found] == sorted({a.block for a in found}) and all(a.block for a in found)
    for captured in found:
        assert captured.name.endswith(where), captured.name
        assert captured.probs.shape == (2, 2, tokens, tokens)
        torch.testing.assert_close(captured.probs.sum(-1), torch.ones(2, 2, tokens))


def test_explicit_attention_equals_torch_sdpa_with_masks_scale_and_causality():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 7, 5, generator=g) for _ in range(3))
    bool_mask = torch.rand(7, 7, generator=g) > 0.3
    bool_mask.fill_diagonal_(True)
    float_mask = torch.randn(2, 1, 7, 7, generator=g)
    cases = [{}, {"scale": 0.3}, {"is_causal": True}, {"attn_mask": bool_mask}, {"attn_mask": float_mask}]
    for kwargs in cases:
        expected = F.scaled_dot_product_attention(q, k, v, **kwargs)
        recorded = []
        with explicit_attention(recorded.append):
            got = F.scaled_dot_product_attention(q, k, v, **kwargs)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        assert len(recorded) == 1 and is_attention(recorded[0], 2), kwargs


def test_tensors_that_are_not_attention_are_ignored():
    batch = 2
    assert not is_attention(torch.rand(batch, 2, 5, 5), batch)  # rows do not sum to 1
    assert not is_attention(torch.rand(batch, 2, 5, 5).softmax(-1), 3)  # another batch
    assert not is_attention(torch.rand(batch, 2, 5, 4).softmax(-1), batch)  # not square
    signed = torch.full((batch, 2, 3, 3), 1.0)
    signed[..., 0] = -1.0  # rows sum to 1 but hold negatives
    assert not is_attention(signed, batch)
    assert is_attention(torch.rand(batch, 2, 5, 5).softmax(-1), batch)


class Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.conv(x).mean(dim=(2, 3, 4)))


@pytest.mark.parametrize("method", ["rollout", "relevance"])
def test_a_model_without_attention_is_a_one_line_error(method):
    model = Cnn()
    with pytest.raises(nv.TargetLayerError, match="no attention probabilities") as caught:
        nv.explain_tokens(model, torch.randn(1, 1, 8, 8, 8), method)
    assert "\n" not in str(caught.value) and "Grad-CAM" in str(caught.value)
    assert hook_count(model) == 0


def test_other_threads_keep_torch_sdpa_while_one_thread_reads_attention():
    import threading

    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 5, 4, generator=g) for _ in range(3))
    recorded, other = [], []
    with explicit_attention(recorded.append):
        worker = threading.Thread(target=lambda: other.append(F.scaled_dot_product_attention(q, k, v)))
        worker.start()
        worker.join()
        F.scaled_dot_product_attention(q, k, v)
    assert len(recorded) == 1 and len(other) == 1
    torch.testing.assert_close(other[0], F.scaled_dot_product_attention(q, k, v))


def test_two_threads_capturing_at_once_each_record_their_own_attention():
    """Thread A opens a capture, B opens one, A closes, then B computes: B still records, and nothing stays patched."""
    import threading

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 5, 4, generator=g) for _ in range(3))
    fused = F.scaled_dot_product_attention
    a_open, b_open, a_closed = threading.Event(), threading.Event(), threading.Event()
    records: dict[str, list] = {"a": [], "b": []}

    def first():
        with explicit_attention(records["a"].append):
            a_open.set()
            b_open.wait(10)
            F.scaled_dot_product_attention(q, k, v)
        a_closed.set()

    def second():
        a_open.wait(10)
        with explicit_attention(records["b"].append):
            b_open.set()
            a_closed.wait(10)
            F.scaled_dot_product_attention(q * 2, k, v)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(records["a"]) == 1 and len(records["b"]) == 1
    torch.testing.assert_close(records["b"][0], ((q * 2) @ k.transpose(-2, -1) / 2.0).softmax(-1))
    assert F.scaled_dot_product_attention is fused


def test_a_function_imported_under_its_own_name_is_read_too():
    from torch.nn.functional import scaled_dot_product_attention as imported

    q = torch.randn(1, 2, 5, 4, generator=torch.Generator().manual_seed(4))
    recorded = []
    with explicit_attention(recorded.append):
        imported(q, q, q)
    assert len(recorded) == 1
