"""Training in less memory (trainer/low_memory.py): stochastic rounding keeps the small updates plain bf16
loses, the one-by-one optimizer is AdamW itself on fp32 weights, and a whole run in the lowest-memory
settings trains, saves, stops and resumes through `lumina-studio train`."""

import copy

import pytest
import torch

from trainer.low_memory import OneByOne, fuse_backward, stochastic_round_


def test_stochastic_rounding_keeps_the_small_updates_plain_bf16_loses():
    weight = torch.full((10_000,), 1.0)
    update = 1e-3  # a quarter of a bf16 step at 1.0 (2^-7 = 0.0078): plain rounding drops it every time
    plain = weight.to(torch.bfloat16)
    rounded = weight.to(torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    for _ in range(100):
        plain = (plain.float() + update).to(torch.bfloat16)
        stochastic_round_(rounded, rounded.float() + update, generator)
    assert plain.float().mean().item() == 1.0  # 100 updates lost
    assert rounded.float().mean().item() == pytest.approx(1.1, abs=0.005)  # kept, on average
    negative = torch.full((10_000,), -1.0)
    target = negative.to(torch.bfloat16)
    stochastic_round_(target, negative - 1e-3, generator)
    assert target.float().mean().item() == pytest.approx(-1.001, abs=2e-4)  # unbiased for negative values too


def small_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))


def test_one_by_one_on_fp32_weights_is_adamw_itself_and_saves_its_state():
    model, reference = small_model(), small_model()
    ours = OneByOne(model.parameters(), "adamw", lr=1e-2, weight_decay=0.01)
    theirs = torch.optim.AdamW(reference.parameters(), lr=1e-2, betas=(0.9, 0.95), eps=1e-15, weight_decay=0.01)
    data = torch.randn(32, 8)
    for _ in range(5):
        for net, optimizer in ((model, ours), (reference, theirs)):
            net(data).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    again = OneByOne(copy.deepcopy(model).parameters(), "adamw", lr=1e-2)
    again.load_state_dict(ours.state_dict())
    assert again.inners[0].state[next(iter(again.index))]["exp_avg"].shape == (16, 8)
    with pytest.raises(ValueError, match="another memory mode"):
        OneByOne(small_model()[0].parameters(), "adamw", lr=1e-2).load_state_dict(ours.state_dict())


def test_the_fused_backward_pass_steps_and_frees_each_gradient_and_bf16_weights_learn():
    model = small_model().to(torch.bfloat16)
    optimizer = OneByOne(model.parameters(), "adafactor", lr=0.1)  # a relative step: times each weight's RMS
    optimizer.set_seed(1, torch.device("cpu"))
    norms = []
    fuse_backward(model, optimizer, clip=1.0, norms=norms)
    data = torch.randn(64, 8).to(torch.bfloat16)
    target = torch.randn(64, 4)
    first = None
    for _ in range(40):
        loss = (model(data).float() - target).square().mean()
        first = first if first is not None else loss.item()
        loss.backward()
        assert all(p.grad is None for p in model.parameters()) and len(norms) == 4
        norms.clear()
    assert loss.item() < 0.8 * first
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


MODES = {
    "default": ({}, {}),
    "bf16": ({"weights": "bf16"}, {}),
    "bf16 + adafactor + ema on cpu": ({"weights": "bf16", "ema_on_cpu": True}, {"name": "adafactor"}),
    "bf16 + adafactor + fused": ({"weights": "bf16", "fused_backward": True}, {"name": "adafactor"}),
    "fp32 + fused adamw": ({"fused_backward": True}, {}),
}


def held_after_one_step(config, memory: dict, optimizer: dict) -> dict[str, int]:
    """Bytes held by category after one training step on the CPU, counted from the tensors themselves."""
    from core.models.nextdit import NextDiT
    from trainer.ema import EMA

    torch.manual_seed(0)
    model = NextDiT(config).to(torch.bfloat16 if memory.get("weights") == "bf16" else torch.float32).train()
    low = memory or optimizer
    opt = OneByOne(model.parameters(), optimizer.get("name", "adamw"), lr=1e-4) if low else \
        torch.optim.AdamW(model.parameters(), lr=1e-4)
    if low:
        opt.set_seed(0, torch.device("cpu"))
    if memory.get("fused_backward"):
        fuse_backward(model, opt, clip=2.0, norms=[])
    ema = EMA(model, 0.9, torch.device("cpu") if memory.get("ema_on_cpu") else None)
    dtype = next(model.parameters()).dtype
    x = torch.randn(1, config.in_channels, 16, 16, dtype=dtype)
    features = torch.randn(1, 8, config.cap_feat_dim, dtype=dtype)
    model(x, torch.rand(1), features, torch.ones(1, 8, dtype=torch.long)).float().square().mean().backward()
    gradients = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    if not memory.get("fused_backward"):
        opt.step()
    ema.update(model)
    states = [state for inner in opt.inners for state in inner.state.values()] if low else list(opt.state.values())
    return {"weights": sum(p.numel() * p.element_size() for p in model.parameters()), "gradients": gradients,
            "optimizer": sum(v.numel() * v.element_size() for s in states for v in s.values() if torch.is_tensor(v)),
            "ema": sum(t.numel() * t.element_size() for t in ema.shadow)}


@pytest.mark.parametrize("mode", list(MODES))
def test_the_static_memory_estimate_is_the_bytes_actually_held(mode, tiny_model):
    from core.models import loader
    from core.models.sources import resolve_source
    from trainer.config import parse_config
    from trainer.memory import estimate_stage, optimizer_bytes, parameter_count

    memory, optimizer = MODES[mode]
    config = loader.dit_config(resolve_source(tiny_model))
    run = parse_config({"version": 1, "base_model": "x", "datasets": [{"path": "x"}], "memory": memory,
                        "optimizer": optimizer, "stages": [{"name": "s", "resolution": 128, "steps": 1,
                                                            "batch_size": 1, "micro_batch_size": 1}]})
    estimate = estimate_stage(config, parameter_count(config), run, run.stages[0], 1, False, 4, cuda=False,
                              optimizer_state=optimizer_bytes(config, run.optimizer.name))
    held = held_after_one_step(config, memory, optimizer)
    for category, actual in held.items():
        expected = getattr(estimate, category)
        assert expected == pytest.approx(actual, rel=0.02, abs=0), (mode, category, expected, actual)


def test_a_gpu_too_small_is_told_which_memory_settings_fit():
    from core.models.nextdit_config import NextDiTConfig
    from trainer.config import parse_config
    from trainer.memory import lighter_settings, optimizer_bytes, parameter_count

    model = NextDiTConfig()  # the 2.6B release
    params = parameter_count(model)
    run = parse_config({"version": 1, "base_model": "x", "datasets": [{"path": "x"}], "stages": [
        {"name": "s", "resolution": 1024, "steps": 1, "batch_size": 4, "micro_batch_size": 1}]})
    said = {gb: lighter_settings(model, params, run, gb * 2**30, lambda name: optimizer_bytes(model, name))
            for gb in (8, 12, 16, 24)}
    assert said[24].startswith("bf16 weights, Adafactor, EMA on the CPU would fit") and "estimated" in said[24]
    assert said[16].startswith("bf16 weights, Adafactor, EMA on the CPU would fit")
    assert said[12].startswith("bf16 weights, Adafactor, fused backward, EMA on the CPU would fit")
    assert "batch_size = micro_batch_size = 1" in said[12] and '[memory] fused_backward = true' in said[12]
    assert said[8].startswith("no memory setting fits 8 GiB")
