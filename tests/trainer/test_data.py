"""Datasets in every supported format, buckets, the data order, the objective and the memory estimate."""

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from core.generation.prompts import SYSTEM_PROMPTS
from trainer.batches import StageData
from trainer.buckets import bucket_sizes, fit_to_bucket, nearest_bucket
from trainer.config import ConfigError, DatasetConfig
from trainer.datasets import bucket_histogram, format_report, read_dataset
from trainer.memory import estimate_stage, parameter_count
from trainer.objective import flow_matching_loss, noisy_inputs, resolution_shift, sample_times


def save_image(path, size=(80, 64), colour=(200, 10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def test_folder_dataset_reports_and_skips_bad_items(tmp_path):
    folder = tmp_path / "data"
    save_image(folder / "good.png").with_suffix(".txt").write_text("a red box\n\nred box, alternative\n")
    save_image(folder / "nested" / "deep.jpg").with_suffix(".txt").write_text("a nested one")
    save_image(folder / "uncaptioned.png")
    save_image(folder / "blank.png").with_suffix(".txt").write_text("  \n")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "broken.txt").write_text("a broken file")
    save_image(folder / "tiny.png", size=(40, 200)).with_suffix(".txt").write_text("too small")
    items, report = read_dataset(DatasetConfig(path=str(folder), repeats=2), 0)
    assert report.format == "folder" and report.items == 2 and report.skipped == 4
    assert sorted(i.image.name for i in items) == ["deep.jpg", "deep.jpg", "good.png", "good.png"]
    good = next(i for i in items if i.image.name == "good.png")
    assert good.captions == ["a red box", "red box, alternative"] and (good.width, good.height) == (80, 64)
    assert good.system_prompt == SYSTEM_PROMPTS["real"]
    assert {p.split("/")[-1] for p in report.no_caption} == {"uncaptioned.png", "blank.png"}
    assert "broken.png: not an image Pillow can read" in report.unreadable[0]
    assert "40x200 (min_side is 64)" in report.too_small[0]
    text = format_report([report], {"low": bucket_histogram(items, 256)})
    assert "2 usable, 4 skipped" in text and "2 without a caption" in text and "stage 'low' buckets:" in text
    assert report.same_name == [] and "sharing a name" not in text


def test_images_sharing_one_caption_file_are_reported(tmp_path):
    folder = tmp_path / "data"
    save_image(folder / "cat.png").with_suffix(".txt").write_text("a red box")
    save_image(folder / "cat.jpg")  # reads cat.txt too: one caption for two pictures
    save_image(folder / "dog.png").with_suffix(".txt").write_text("another")
    items, report = read_dataset(DatasetConfig(path=str(folder)), 0)
    assert report.items == 3 and report.skipped == 0  # both are used, and said so
    [group] = report.same_name
    assert sorted(Path(part).name for part in group.split(", ")) == ["cat.jpg", "cat.png"]
    assert "1 sharing a name" in format_report([report], {})


def test_truncated_images_are_unreadable_before_the_run_starts(tmp_path):
    folder = tmp_path / "data"
    for name, size in (("whole.png", None), ("cut.png", 150), ("cut.jpg", 300)):
        path = save_image(folder / name, size=(256, 256))
        if name.endswith(".jpg"):
            Image.effect_noise((256, 256), 60).convert("RGB").save(path)
        if size:
            path.write_bytes(path.read_bytes()[:size])
        path.with_suffix(".txt").write_text("a caption")
    items, report = read_dataset(DatasetConfig(path=str(folder)), 0)
    assert [i.image.name for i in items] == ["whole.png"]
    assert sorted(line.split(":")[0].rsplit("/", 1)[-1] for line in report.unreadable) == ["cut.jpg", "cut.png"]


def test_imagefolder_metadata_jsonl(tmp_path):
    folder = tmp_path / "hf"
    save_image(folder / "a.png")
    save_image(folder / "b.png")
    lines = [{"file_name": "a.png", "text": "first"}, {"file_name": "b.png", "caption": ""}, "not json{"]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines))
    items, report = read_dataset(DatasetConfig(path=str(folder), name="hf"), 0)
    assert report.format == "imagefolder" and [i.captions for i in items] == [["first"]]
    assert items[0].dataset == "hf" and len(report.no_caption) == 1 and "line 3: not valid JSON" in report.unreadable[0]


@pytest.mark.parametrize(("keys", "system_prompt"), [(("path", "prompt"), "base"),
                                                     (("image_path", "super_high_quality_caption"), "align")])
def test_authors_jsonl_formats_pick_their_system_prompt(tmp_path, keys, system_prompt):
    save_image(tmp_path / "img" / "x.png")
    listing = tmp_path / "data.jsonl"
    listing.write_text(json.dumps({keys[0]: "img/x.png", keys[1]: "a detailed caption"}) + "\n"
                       + json.dumps({keys[0]: "img/missing.png", keys[1]: "gone"}) + "\n")
    items, report = read_dataset(DatasetConfig(path=str(listing)), 0)
    assert report.format == "jsonl" and len(items) == 1 and items[0].system_prompt == SYSTEM_PROMPTS[system_prompt]
    assert "missing.png: file not found" in report.unreadable[0]
    items, _ = read_dataset(DatasetConfig(path=str(listing), system_prompt="aesthetics"), 0)
    assert items[0].system_prompt == SYSTEM_PROMPTS["aesthetics"]


def test_missing_dataset_path_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"datasets\[2\].path: .* does not exist"):
        read_dataset(DatasetConfig(path=str(tmp_path / "nope")), 2)


@pytest.mark.parametrize("resolution", [32, 64, 256, 512, 1024])
def test_buckets_keep_the_area_and_aspect_limits(resolution):
    buckets = bucket_sizes(resolution)
    assert (resolution, resolution) in buckets
    for width, height in buckets:
        assert width % 16 == 0 and height % 16 == 0
        assert width * height <= resolution**2 and max(width / height, height / width) <= 4
    assert buckets == [(h, w) for w, h in reversed(buckets)]  # tall and wide alike
    if resolution >= 256:
        assert min(w * h for w, h in buckets) >= 0.75 * resolution**2  # no bucket wastes much area


def test_images_go_to_the_nearest_bucket_and_are_cropped_to_it():
    buckets = bucket_sizes(1024)
    assert nearest_bucket(4000, 3000, buckets) == (1152, 896)  # 4:3 -> 1.29
    assert nearest_bucket(1000, 1000, buckets) == (1024, 1024)
    assert nearest_bucket(100, 1000, buckets) == (512, 2048)  # beyond 4:1 -> the tallest bucket
    fitted = fit_to_bucket(Image.new("RGB", (4000, 3000)), (1152, 896))
    assert fitted.size == (1152, 896)


def make_manifest(count=10, buckets=((32, 32), (48, 16))):
    return {"stage": "s", "empty": "e", "items": [
        {"bucket": list(buckets[i % len(buckets)]), "latent": f"l{i}", "texts": [f"t{i}"]} for i in range(count)]}


def test_data_order_is_deterministic_covers_every_item_and_keeps_buckets_apart():
    manifest = make_manifest()
    data = StageData(None, manifest, micro_batch=3, seed=5, stage_index=1)
    again = StageData(None, manifest, micro_batch=3, seed=5, stage_index=1)
    other_seed = StageData(None, manifest, micro_batch=3, seed=6, stage_index=1)
    epoch = [data.indices(p) for p in range(data.batches_per_epoch)]
    assert sorted(i for batch in epoch for i in batch) == list(range(10))
    for batch in epoch:
        assert len({tuple(manifest["items"][i]["bucket"]) for i in batch}) == 1
    # Random access (what a resumed run does) gives the same batches as reading in order.
    assert [again.indices(p) for p in reversed(range(12))] == [data.indices(p) for p in reversed(range(12))]
    assert [other_seed.indices(p) for p in range(4)] != [data.indices(p) for p in range(4)]
    assert [data.indices(p) for p in range(4)] != [data.indices(p + data.batches_per_epoch) for p in range(4)]


def test_time_shift_moves_large_images_towards_noise():
    assert resolution_shift(32, 32) == pytest.approx(math.exp(0.5))  # 256 tokens
    assert resolution_shift(128, 128) == pytest.approx(math.exp(1.15))  # 4096 tokens (1024 px)
    generator = torch.Generator().manual_seed(0)
    small = sample_times(20000, resolution_shift(4, 4), generator)
    large = sample_times(20000, resolution_shift(128, 128), generator)
    assert 0 < float(large.min()) and float(large.max()) < 1
    assert float(large.mean()) < float(small.mean()) < 0.5 + 0.05  # t = 0 is noise


def test_noisy_inputs_and_loss():
    latents = torch.randn(3, 4, 8, 8)
    x_t, t, target = noisy_inputs(latents, torch.Generator().manual_seed(1))
    noise = latents - target
    assert torch.allclose(x_t, t.view(-1, 1, 1, 1) * latents + (1 - t.view(-1, 1, 1, 1)) * noise, atol=1e-6)
    assert flow_matching_loss(target, target, 1.0) == 0
    off = target + 1.0  # a constant error also shows in the pooled term
    assert flow_matching_loss(off, target, 1.0) == pytest.approx(2.0)
    assert flow_matching_loss(off, target, 0.0) == pytest.approx(1.0)


def test_memory_estimate_of_the_released_model_matches_the_recipe():
    from core.models.nextdit import NextDiTConfig
    from trainer.config import StageConfig, parse_config

    params = parameter_count(NextDiTConfig())
    assert params == 2_609_771_456 - 2304  # the original checkpoint's unused norm_final weight is dropped
    run = parse_config({"version": 1, "base_model": "m", "datasets": [{"path": "d"}],
                        "stages": [{"name": "hi", "resolution": 1024, "steps": 1, "batch_size": 8,
                                    "micro_batch_size": 8}]})
    stage: StageConfig = run.stages[0]
    one = estimate_stage(NextDiTConfig(), params, run, stage, processes=1, sharded=False, activation_bytes=2)
    static = one.weights + one.gradients + one.optimizer + one.ema
    assert static / 1e9 == pytest.approx(52.2, abs=0.1)  # REFERENCE.md: 10.4 + 10.4 + 20.9 + 10.4 GB
    eight = estimate_stage(NextDiTConfig(), params, run, stage, processes=8, sharded=True, activation_bytes=2)
    assert eight.weights == one.weights // 8 and eight.activations == one.activations
    run.activation_checkpointing = False
    assert estimate_stage(NextDiTConfig(), params, run, stage, 1, False, 2).activations > 4 * one.activations


def test_cpu_training_is_held_against_the_computers_memory():
    from core.models.nextdit import NextDiTConfig
    from trainer.config import parse_config
    from trainer.memory import check_ram, ram_size, stage_estimates

    run = parse_config({"version": 1, "base_model": "m", "datasets": [{"path": "d"}],
                        "stages": [{"name": "hi", "resolution": 1024, "steps": 1, "batch_size": 8,
                                    "micro_batch_size": 8}]})
    released = stage_estimates(NextDiTConfig(), parameter_count(NextDiTConfig()), run, 1, "cpu", "no")
    assert released[0].overhead == 0 and released[0].total > 52e9  # no CUDA context; fp32 activations
    assert check_ram(released, 1, 64 * 2**30) and check_ram(released, 1, 128 * 2**30) == []
    [warning] = check_ram(released, 2, 128 * 2**30)  # two processes each hold the whole model
    assert "2 process(es)" in warning and "128 GiB" in warning
    assert ram_size() > 2**30


def test_an_image_deleted_after_the_check_is_skipped_with_a_warning(tmp_path, tiny_model):
    import tomli_w

    from core.models.sources import resolve_source
    from trainer.config import load_config
    from trainer.datasets import check_datasets
    from trainer.features import FeatureCache

    folder = tmp_path / "data"
    for name in ("a", "b", "c"):
        save_image(folder / f"{name}.png", size=(64, 64)).with_suffix(".txt").write_text(f"picture {name}")
    path = tmp_path / "run.toml"
    path.write_text(tomli_w.dumps({"version": 1, "name": "t", "base_model": str(tiny_model),
                                   "datasets": [{"path": str(folder), "min_side": 32}],
                                   "samples": {"prompts": ["a"], "steps": 2},
                                   "stages": [{"name": "s", "resolution": 32, "steps": 2, "batch_size": 1,
                                               "micro_batch_size": 1}]}))
    config = load_config(path)
    check = check_datasets(config)
    assert len(check.items) == 3
    (folder / "b.png").unlink()  # deleted after the check, before the features are made
    cache = FeatureCache(tmp_path / "run")
    failed, _ = cache.prepare(config, resolve_source(tiny_model), check.items, torch.device("cpu"), torch.float32)
    assert len(failed) == 1 and "b.png" in failed[0] and "skipped" in failed[0]
    assert sorted(Path(e["image"]).name for e in cache.manifest(0)["items"]) == ["a.png", "c.png"]


def test_a_fifo_named_like_an_image_or_caption_never_blocks(tmp_path):
    import os
    import subprocess
    import sys

    from core.datasets import list_images
    from core.captioning.files import read_captions

    folder = tmp_path / "data"
    save_image(folder / "a.png", size=(64, 64)).with_suffix(".txt").write_text("a picture")
    os.mkfifo(folder / "b.png")
    save_image(folder / "c.png", size=(64, 64))
    os.mkfifo(folder / "c.txt")
    assert [p.name for p in list_images(folder)] == ["a.png", "c.png"]
    with pytest.raises(OSError, match="not a regular file"):
        read_captions(folder / "c.png")
    items, report = read_dataset(DatasetConfig(path=str(folder), min_side=32), 0)
    assert [i.image.name for i in items] == ["a.png"] and "c.txt" in report.unreadable[0]
    # the whole CLI too: captioning the folder (c.png's caption file is a FIFO) ends, and says so
    result = subprocess.run([sys.executable, "-m", "core.cli", "caption", str(folder), "--mode", "overwrite"],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "LUMINA_STUDIO_HOME": str(tmp_path / "home")})
    assert "not a regular file" in result.stderr or "c.png" in result.stderr, result.stderr


def test_review_marks_decide_which_images_train(tmp_path):
    from core.captioning.state import CaptionState

    folder = tmp_path / "data"
    for name in ("ok", "fix", "bad", "new"):
        save_image(folder / f"{name}.png").with_suffix(".txt").write_text(f"picture {name}")
    state = CaptionState(folder)
    for name, status in (("ok", "approved"), ("fix", "needs fixing"), ("bad", "rejected")):
        state.set_status(folder / f"{name}.png", status)
    state.close()
    chosen = {}
    for review in ("all", "not_rejected", "approved"):
        items, report = read_dataset(DatasetConfig(path=str(folder), review=review), 0)
        chosen[review] = sorted(i.image.stem for i in items)
        if review == "not_rejected":
            assert report.left_out_by_review == {"rejected": 1} and report.skipped == 1
            assert "left out by the review filter (all but the rejected): 1 rejected" in format_report([report], {})
    assert chosen == {"all": ["bad", "fix", "new", "ok"], "not_rejected": ["fix", "new", "ok"], "approved": ["ok"]}
    assert DatasetConfig(path="x").review == "not_rejected"  # the default leaves rejected images out
