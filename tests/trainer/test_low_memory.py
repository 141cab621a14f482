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


def train_side_by_side(runs, data: torch.Tensor, steps: int) -> None:
    """Each (model, optimizer) of `runs` takes the same `steps` on `data`."""
    for _ in range(steps):
        for net, optimizer in runs:
            net(data).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()


def test_one_by_one_on_fp32_weights_is_adamw_itself_and_saves_its_state():
    model, reference = small_model(), small_model()
    ours = OneByOne(model.parameters(), "adamw", lr=1e-2, weight_decay=0.01)
    theirs = torch.optim.AdamW(reference.parameters(), lr=1e-2, betas=(0.9, 0.95), eps=1e-15, weight_decay=0.01)
    train_side_by_side([(model, ours), (reference, theirs)], torch.randn(32, 8), steps=5)
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    again = OneByOne(copy.deepcopy(model).parameters(), "adamw", lr=1e-2)
    again.load_state_dict(ours.state_dict())
    assert again.inners[0].state[next(iter(again.index))]["exp_avg"].shape == (16, 8)
    with pytest.raises(ValueError, match="another optimizer, memory mode or model"):
        OneByOne(small_model()[0].parameters(), "adamw", lr=1e-2).load_state_dict(ours.state_dict())


def test_the_fused_backward_pass_steps_and_frees_each_gradient_and_bf16_weights_learn():
    model = small_model().to(torch.bfloat16)
    optimizer = OneByOne(model.parameters(), "adafactor", lr=0.1)  # a large rate: a clear drop in 40 steps
    optimizer.set_seed(1)
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


def test_eight_bit_adamw_follows_adamw_and_its_state_saves_and_loads():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 4))
    reference, start = copy.deepcopy(model), model[0].weight.detach().clone()
    ours = OneByOne(model.parameters(), "adamw8bit", lr=1e-2)
    theirs = torch.optim.AdamW(reference.parameters(), lr=1e-2, betas=(0.9, 0.95), eps=1e-15)
    data = torch.randn(32, 64)
    train_side_by_side([(model, ours), (reference, theirs)], data, steps=20)
    first = ours.inners[0].state[model[0].weight]
    assert type(first["exp_avg"]).__name__ == "OptimState8bit" and first["exp_avg"].codes.dtype == torch.uint8
    moved = (reference[0].weight - start).abs().mean()
    assert (model[0].weight - reference[0].weight).abs().mean() < 0.1 * moved  # 8-bit moments: near, not exact
    assert model(data).square().mean().item() == pytest.approx(reference(data).square().mean().item(), rel=0.05)
    again = OneByOne(copy.deepcopy(model).parameters(), "adamw8bit", lr=1e-2)
    again.load_state_dict(ours.state_dict())
    assert type(again.inners[0].state[next(iter(again.index))]["exp_avg"]).__name__ == "OptimState8bit"
    with pytest.raises(ValueError, match="another optimizer"):
        OneByOne(copy.deepcopy(model).parameters(), "adafactor", lr=1e-2).load_state_dict(ours.state_dict())


def test_adafactor_steps_are_the_size_of_adamws_at_the_same_rate():
    """torch's Adafactor steps relative to each weight's RMS; the scale set at the start evens that out."""
    steps = {}
    for name in ("adamw", "adafactor"):
        model = small_model()
        before = [p.detach().clone() for p in model.parameters()]
        optimizer = OneByOne(model.parameters(), name, lr=1e-3, weight_decay=0.0)
        model(torch.randn(32, 8)).square().mean().backward()
        optimizer.step()
        steps[name] = torch.cat([(p.detach() - b).abs().flatten() for p, b in zip(model.parameters(), before)])
    assert steps["adamw"].mean().item() == pytest.approx(1e-3, rel=0.05)
    assert steps["adafactor"].mean().item() == pytest.approx(1e-3, rel=0.5)


MODES = {
    "default": ({}, {}),
    "bf16": ({"weights": "bf16"}, {}),
    "bf16 + adamw8bit + ema on cpu": ({"weights": "bf16", "ema_on_cpu": True}, {"name": "adamw8bit"}),
    "bf16 + adafactor + ema on cpu": ({"weights": "bf16", "ema_on_cpu": True}, {"name": "adafactor"}),
    "bf16 + adafactor + fused": ({"weights": "bf16", "fused_backward": True}, {"name": "adafactor"}),
    "fp32 + fused adamw": ({"fused_backward": True}, {}),
}


def tensor_bytes(tensor: torch.Tensor) -> int:
    """A tensor's bytes; a quantized state (torchao's subclasses) is the sum of the tensors it is made of."""
    parts = getattr(tensor, "tensor_attrs", None)
    if parts:
        return sum(tensor_bytes(getattr(tensor, name)) for name in parts)
    return tensor.numel() * tensor.element_size()


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
        opt.set_seed(0)
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
            "optimizer": sum(tensor_bytes(v) for s in states for v in s.values() if torch.is_tensor(v)),
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
            for gb in (4, 8, 12, 16, 24)}
    assert said[24].startswith("bf16 weights, 8-bit AdamW, EMA on the CPU would fit") and "estimated" in said[24]
    assert '[optimizer] name = "adamw8bit"' in said[24] and "batch" not in said[24]  # the batch of 4 is kept
    assert said[16].startswith("bf16 weights, Adafactor, EMA on the CPU would fit")
    assert said[12].startswith("bf16 weights, Adafactor, fused backward, EMA on the CPU would fit")
    assert "stage 's': batch 1, micro-batch 1" in said[12] and '[memory] fused_backward = true' in said[12]
    assert said[8].startswith("bf16 weights, Adafactor, fused backward, 18 blocks swapped to the CPU")
    assert "[memory] blocks_to_swap = 18" in said[8]
    assert said[4].startswith("no memory mode fits 4 GiB")  # activations and CUDA alone need more


def saved_for_backward(model, resolution: int, caption_tokens: int, dtype) -> int:
    """Bytes the model's forward pass keeps for its backward pass (saved-tensor hooks; weights not counted)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    config = model.config
    x = torch.randn(1, config.in_channels, resolution // 8, resolution // 8, dtype=dtype)
    features = torch.randn(1, caption_tokens, config.cap_feat_dim, dtype=dtype)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x, torch.rand(1), features, torch.ones(1, caption_tokens, dtype=torch.long))
    return sum(kept.values())


@pytest.mark.parametrize("checkpointing", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_activation_estimate_is_what_the_forward_pass_keeps(checkpointing, dtype):
    """Measured at two resolutions with saved-tensor hooks: the per-token cost (the slope) and the totals."""
    from core.models.nextdit import NextDiT
    from core.models.nextdit_config import NextDiTConfig
    from trainer.memory import activation_estimate

    config = NextDiTConfig(hidden_size=192, num_layers=4, num_refiner_layers=2, num_attention_heads=3,
                           num_kv_heads=1, cap_feat_dim=64, axes_dim_rope=(16, 24, 24))
    torch.manual_seed(0)
    model = NextDiT(config).to(dtype).train()
    model.activation_checkpointing = checkpointing
    size = 2 if dtype == torch.bfloat16 else 4
    measured, estimated = {}, {}
    for resolution in (256, 512):
        measured[resolution] = saved_for_backward(model, resolution, 32, dtype)
        estimated[resolution] = activation_estimate(config, resolution, 1, checkpointing, size, caption_tokens=32)[0]
        assert estimated[resolution] == pytest.approx(measured[resolution], rel=0.05), resolution
    tokens = (512 // 16) ** 2 - (256 // 16) ** 2
    slope = (measured[512] - measured[256]) / tokens
    assert (estimated[512] - estimated[256]) / tokens == pytest.approx(slope, rel=0.02)


@pytest.mark.parametrize("gigabytes, chosen", [
    (8, "bf16 weights, Adafactor, fused backward, 18 blocks swapped to the CPU, EMA on the CPU"),
    (12, "bf16 weights, Adafactor, fused backward, EMA on the CPU"),
    (16, "bf16 weights, Adafactor, EMA on the CPU"),
    (24, "bf16 weights, 8-bit AdamW, EMA on the CPU"),
])
def test_train_check_plans_the_full_model_at_1024_for_a_home_gpu(full_size_model, tmp_path, capsys, gigabytes,
                                                                  chosen):
    from core.scenes.world import write_dataset
    from trainer.cli import main

    write_dataset(tmp_path / "scenes", 4, seed=0)
    config = tmp_path / "run.toml"
    config.write_text(f'version = 1\nbase_model = "{full_size_model.as_posix()}"\n[[datasets]]\npath = '
                      f'"{(tmp_path / "scenes").as_posix()}"\n[[stages]]\nname = "high-res"\nresolution = 1024\n'
                      'steps = 10\nbatch_size = 4\nmicro_batch_size = 1\n')
    assert main([str(config), "--check", "--gpu-memory", str(gigabytes)]) == 0
    out, err = capsys.readouterr()
    assert "memory mode: fp32 weights, AdamW, EMA" in out
    assert "weights 9.72 GiB, gradients 9.72 GiB, optimizer 19.4 GiB, ema 9.72 GiB" in out  # per category
    assert f"memory modes for one GPU of {gigabytes} GiB" in out
    fitting = [line.strip() for line in out.splitlines() if line.strip().startswith("fits: ")]
    assert fitting and fitting[0].startswith(f"fits: {chosen}: about ")
    assert f"warning: {chosen} would fit" in err  # today's settings do not: the one to use is named


@pytest.mark.parametrize("gigabytes", [8, 12, 16, 24])
def test_each_home_gpu_preset_fits_its_card(full_size_model, tmp_path, capsys, gigabytes):
    import tomllib

    import tomli_w

    from core.scenes.world import write_dataset
    from trainer.cli import PRESETS, main
    from trainer.config import parse_config
    from trainer.memory import mode_label

    config = tomllib.loads((PRESETS / f"lumina2-1024-{gigabytes}gb.toml").read_text())
    config["base_model"] = str(full_size_model)
    for dataset in config["datasets"]:
        dataset["path"] = str(tmp_path / dataset["name"])
        write_dataset(tmp_path / dataset["name"], 4, seed=0)
    path = tmp_path / "run.toml"
    path.write_text(tomli_w.dumps(config))
    assert main([str(path), "--check", "--gpu-memory", str(gigabytes)]) == 0
    out, err = capsys.readouterr()
    assert "warning" not in err, err  # every stage fits
    label = mode_label(parse_config(config))
    assert f"memory mode: {label}" in out
    # the list names each mode as Fit to my GPU would choose it: the swapping one with the fewest blocks that fit
    listed = label.replace("24 blocks", "18 blocks") if gigabytes == 8 else label
    assert f"fits: {listed}: about " in out


def test_a_joint_blocks_weights_are_counted_as_the_module_holds_them():
    from core.models.nextdit import Block
    from core.models.nextdit_config import NextDiTConfig
    from trainer.memory import block_parameter_count

    for config in (NextDiTConfig(), NextDiTConfig(hidden_size=96, num_attention_heads=4, num_kv_heads=2,
                                                  multiple_of=16, num_layers=2)):
        with torch.device("meta"):
            block = Block(config, modulation=True)
        assert block_parameter_count(config) == sum(p.numel() for p in block.parameters())


def test_block_swapping_trains_exactly_as_without_and_copies_each_swapped_block_twice_a_step(tiny_model):
    """On the CPU the copies cost nothing, so what is tested here is the bookkeeping: each swapped block comes in
    for its forward pass and again for its recomputation, its weights are stepped where they live, and the
    weights after three steps are the same bit for bit as without swapping."""
    from core.models import loader
    from core.models.sources import resolve_source
    from trainer.block_swap import BlockSwap

    def trained(swap_blocks: int):
        model = loader.load_dit(resolve_source(tiny_model), torch.bfloat16, torch.device("cpu"))
        model.train().requires_grad_(True)
        model.activation_checkpointing = True
        optimizer = OneByOne(model.parameters(), "adafactor", lr=1e-3)
        swap = BlockSwap(list(model.layers)[-swap_blocks:], torch.device("cpu")) if swap_blocks else None
        fuse_backward(model, optimizer, clip=2.0, norms=[], swap=swap)
        generator = torch.Generator().manual_seed(0)
        for step in range(3):
            optimizer.set_seed(step)
            x = torch.randn(2, model.config.in_channels, 16, 16, generator=generator).to(torch.bfloat16)
            features = torch.randn(2, 8, model.config.cap_feat_dim, generator=generator).to(torch.bfloat16)
            model(x, torch.rand(2, generator=generator), features, torch.ones(2, 8, dtype=torch.long)) \
                .float().square().mean().backward()
        with torch.no_grad():  # a forward pass outside training (samples, validation) brings the block too
            model(x, torch.rand(2, generator=generator), features, torch.ones(2, 8, dtype=torch.long))
        return model, swap

    plain, _ = trained(0)
    swapped, swap = trained(1)
    assert swap.copies_in == 3 * 2 + 1  # per step: the forward pass and its recomputation; then one more
    assert all(p.data_ptr() == swap.home[p].data_ptr() for p in swap.home)  # each swapped weight is home again
    for a, b in zip(plain.state_dict().values(), swapped.state_dict().values()):
        assert torch.equal(a, b)
