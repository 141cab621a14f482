"""Our staged Next-DiT against diffusers' Lumina2Transformer2DModel, weight for weight."""

from types import SimpleNamespace

import pytest
import torch
from diffusers import Lumina2Transformer2DModel

from core.models import nextdit
from core.models.nextdit import NextDiT, NextDiTConfig

CONFIG = dict(
    sample_size=16, patch_size=2, in_channels=4, hidden_size=48, num_layers=2, num_refiner_layers=2,
    num_attention_heads=4, num_kv_heads=2, multiple_of=16, axes_dim_rope=(4, 4, 4), axes_lens=(300, 512, 512),
    cap_feat_dim=32,
)


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    reference = Lumina2Transformer2DModel(**CONFIG).eval()
    with torch.no_grad():  # large random weights: gates and modulation far from their init values
        for parameter in reference.parameters():
            parameter.normal_(0, 0.3)
    ours = NextDiT(NextDiTConfig.from_dict(dict(reference.config))).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


@pytest.mark.parametrize("latent_size,lengths", [((12, 8), [7, 3]), ((8, 8), [10, 10]), ((16, 4), [1, 9])])
def test_matches_diffusers_with_padded_captions(pair, latent_size, lengths):
    reference, ours = pair
    x = torch.randn(2, 4, *latent_size)
    t = torch.tensor([0.3, 0.8])
    features = torch.randn(2, 10, 32)
    mask = torch.zeros(2, 10, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    with torch.no_grad():
        expected = reference(x, t, features, mask, return_dict=False)[0]
        got = ours(x, t, features, mask)
    scale = expected.abs().max()
    assert (got - expected).abs().max() / scale < 1e-6


def test_expanded_kv_heads_match_grouped_ones(pair, monkeypatch):
    """Where SDPA cannot run grouped heads fused (CUDA with a mask or in float32), K/V are expanded instead."""
    _, ours = pair
    takes = nextdit.sdpa_takes_grouped_heads
    x, t, features = torch.randn(2, 4, 8, 8), torch.tensor([0.3, 0.8]), torch.randn(2, 10, 32)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.no_grad():
        grouped = ours(x, t, features, mask)
        monkeypatch.setattr(nextdit, "sdpa_takes_grouped_heads", lambda q, key_mask: False)
        expanded = ours(x, t, features, mask)
    assert torch.allclose(expanded, grouped, atol=1e-5)
    assert takes(torch.empty(1), torch.ones(1, dtype=torch.bool))  # the CPU kernel: always
    cuda = [SimpleNamespace(is_cuda=True, dtype=dtype) for dtype in (torch.bfloat16, torch.float32)]
    assert takes(cuda[0], None) and not takes(cuda[0], torch.ones(1)) and not takes(cuda[1], None)


def test_stages_equal_forward_and_rows_are_independent(pair):
    _, ours = pair
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([0.5, 0.5])
    features = torch.randn(2, 6, 32)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]])
    with torch.no_grad():
        cond = ours.prepare(features, mask, (8, 8))
        hidden, temb = ours.embed(x, t, cond)
        staged = ours.final(ours.joint_blocks(hidden, temb, cond), temb, cond)
        single = ours(x[1:], t[1:], features[1:, :2], mask[1:, :2])
    assert torch.equal(staged, ours(x, t, features, mask))
    # The second row alone (no padding) equals the same row in the padded batch.
    assert (single - staged[1:]).abs().max() / staged.abs().max() < 1e-6


def test_config_round_trip():
    config = NextDiTConfig()
    assert NextDiTConfig.from_dict(config.to_diffusers_dict()) == config
    assert config.ffn_inner_dim == 9216 and config.head_dim == 96
    assert config.max_image_size() == (8192, 8192)


def test_activation_checkpointing_gives_the_same_gradients(pair):
    _, ours = pair
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([0.2, 0.7])
    features, mask = torch.randn(2, 5, 32), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    grads = []
    for recompute in (False, True):
        ours.zero_grad()
        ours.requires_grad_(True).activation_checkpointing = recompute
        ours(x, t, features, mask).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in ours.parameters() if p.grad is not None]))
    ours.requires_grad_(False).activation_checkpointing = False
    assert grads[0].abs().max() > 0
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-5)
