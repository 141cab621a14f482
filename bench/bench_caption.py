"""Captioning: listing a 50,000-image folder with the skip-existing check, and the demo captioner's images/s
against batch size, with references timed in the same run.

Listing: `CaptionRun.plan()` (os.scandir + one stat per image's sidecar) against a plain `Path.rglob` with
`is_file` per file (what the trainer's reader did before), over 50,000 empty .png files, half with a .txt.
Throughput: the detailed style through the real adapter, greedy, on 64x64 scenes.
Pixel budget: peak RSS of a process reading one batch (8) of 13000x13000 PNGs as the captioner does (each
shrunk to MAX_SIDE as it is read) against reading them whole, in fresh processes.

    python bench/bench_caption.py [--images 50000] [--only listing|throughput|pixels]
    (writes bench/out/bench_caption.json)
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


BATCH_READ = """
import resource, sys
sys.path.insert(0, sys.argv[1])
from core.captioning.job import MAX_SIDE
from core.images import open_rgb
batch = [open_rgb(sys.argv[2], MAX_SIDE if sys.argv[3] == "shrunk" else None) for _ in range(8)]
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def pixels(side: int = 13_000) -> dict:
    """Peak RSS (MiB) of reading 8 huge PNGs as the captioner does, against reading them whole."""
    import subprocess

    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "huge.png"
        Image.linear_gradient("L").resize((side, side)).convert("RGB").save(path, compress_level=1)
        peak = {how: int(subprocess.run([sys.executable, "-c", BATCH_READ, str(ROOT), str(path), how],
                                        capture_output=True, text=True, check=True).stdout)
                for how in ("whole", "shrunk")}
    return {"image": f"{side}x{side}", "batch": 8, "peak_rss_mib": peak,
            "ratio": round(peak["shrunk"] / peak["whole"], 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--only", choices=("listing", "throughput", "pixels"))
    args = parser.parse_args()
    import torch

    from trainer.demo_captioner import OUT, throughput

    parts = (("listing", "listing", lambda: listing(args.images)),
             ("throughput", "demo_images_per_second", lambda: throughput(OUT)), ("pixels", "pixels", pixels))
    results = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                          f"torch {torch.__version__}, Python {platform.python_version()}",
               **{key: run() for option, key, run in parts if args.only in (None, option)}}
    save_results("bench_caption", results)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
