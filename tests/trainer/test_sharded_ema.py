"""The EMA under FSDP2 sharding (what several GPUs use), run as two CPU processes over gloo."""

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from core.models.nextdit import NextDiT, NextDiTConfig
from trainer.ema import EMA

CONFIG = NextDiTConfig(hidden_size=48, num_layers=2, num_refiner_layers=1, num_attention_heads=4, num_kv_heads=2,
                       multiple_of=16, axes_dim_rope=(4, 4, 4), cap_feat_dim=32, in_channels=4)


def train_a_step(model, sharded: bool):
    torch.manual_seed(0)
    ema = EMA(model, decay=0.5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([0.3, 0.6])
    features, mask = torch.randn(2, 5, 32), torch.ones(2, 5, dtype=torch.long)
    model.activation_checkpointing = True
    model(x, t, features, mask).square().mean().backward()
    optimizer.step()
    ema.update(model)
    assert ema.sharded == sharded
    return ema


def sharded_worker(rank: int, init_file: str, folder: str):
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(1)
    model = NextDiT(CONFIG)
    for block in model.layers:
        fully_shard(block)
    fully_shard(model)
    ema = train_a_step(model, sharded=True)
    full = ema.full_state()  # a collective: both processes take part
    ema.save(Path(folder), rank)
    reloaded = EMA(model, decay=0.5)
    reloaded.load(Path(folder), rank)
    again = reloaded.full_state()
    if rank == 0:  # shared with the test through a file (tensors in a queue die with the process)
        save_file(full, str(Path(folder) / "full.safetensors"))
        assert all(torch.equal(again[k], full[k]) for k in full)  # saved per rank and loaded back exactly
    dist.barrier()
    dist.destroy_process_group()


def test_sharded_ema_matches_the_single_process_one(tmp_path):
    mp.start_processes(sharded_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="spawn")
    sharded_full = load_file(str(tmp_path / "full.safetensors"))
    assert sorted(p.name for p in tmp_path.glob("ema-rank*.safetensors")) == ["ema-rank0.safetensors",
                                                                            "ema-rank1.safetensors"]
    torch.manual_seed(1)
    single = train_a_step(NextDiT(CONFIG), sharded=False).full_state()
    assert single.keys() == sharded_full.keys()
    for name in single:
        assert torch.allclose(single[name], sharded_full[name], atol=1e-6), name
