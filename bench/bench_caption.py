"""Captioning: listing a 50,000-image folder with the skip-existing check, and the demo captioner's images/s
against batch size, with references timed in the same run.

Listing: `CaptionRun.plan()` (os.scandir + one stat per image's sidecar) against a plain `Path.rglob` with
`is_file` per file (what the trainer's reader did before), over 50,000 empty .png files, half with a .txt.
Throughput: the detailed style through the real adapter, greedy, on 64x64 scenes.

    python bench/bench_caption.py [--images 50000]     (writes bench/out/bench_caption.json)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.captioning.job import CaptionRun, CaptionSettings  # noqa: E402
from results import save_results  # noqa: E402


class NoModel:
    name, model_type, follows_questions = "none", "none", True


def listing(count: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for i in range(count):
            (root / f"img-{i:06d}.png").touch()
            if i % 2:
                (root / f"img-{i:06d}.txt").write_text("a caption\n")
        started = time.perf_counter()
        todo, skipped = CaptionRun(CaptionSettings(folder=folder), NoModel()).plan()
        ours = time.perf_counter() - started
        started = time.perf_counter()
        reference = sorted(p for p in root.rglob("*") if p.suffix == ".png" and p.is_file())
        rglob = time.perf_counter() - started
    assert len(todo) == count // 2 and skipped == count - count // 2 and len(reference) == count
    return {"images": count, "plan_seconds": round(ours, 3), "rglob_is_file_seconds": round(rglob, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000)
    args = parser.parse_args()
    import torch

    from trainer.demo_captioner import OUT, throughput

    results = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                          f"torch {torch.__version__}, Python {platform.python_version()}",
               "listing": listing(args.images), "demo_images_per_second": throughput(OUT)}
    save_results("bench_caption", results)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
