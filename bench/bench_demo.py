"""The built-in demo model: time per 64x64 image and prompt alignment, uncached and with the step cache.

The uncached run is the reference for the cached one (same prompts, seeds and machine, in this run).
Targets (issue 6): under 1 s per image at the default settings on the 2-core machine; with the cache at
0.3, at least a third fewer joint-block passes for at most 2 points less alignment.

    python bench/bench_demo.py [--count 200] [--seed 1000] [--cache 0.3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_generate import cpu_name  # noqa: E402

from core.models.registry import DEMO_FOLDER  # noqa: E402
from trainer.demo import measure_alignment  # noqa: E402
from results import save_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--cache", default="0.3")
    args = parser.parse_args()

    reports = measure_alignment(DEMO_FOLDER, args.count, args.seed, args.cache)
    plain, cached = reports["default"], reports[f"cache_{args.cache}"]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
        "prompts": args.count, "seed": args.seed,
        "reports": reports,
        "cache": {
            "joint_passes_saved": 1 - cached["transformer_evaluations"] / plain["transformer_evaluations"],
            "speedup": plain["seconds_per_image"] / cached["seconds_per_image"],
            "single_drop_points": 100 * (plain["single"]["all"] - cached["single"]["all"]),
            "pair_drop_points": 100 * (plain["pair"]["all"] - cached["pair"]["all"]),
        },
    }
    save_results("bench_demo", result)
    print(f"{'settings':<12}{'s/image':>9}{'joint passes':>14}{'single: all':>13}{'pairs: all':>12}")
    for label, report in reports.items():
        print(f"{label:<12}{report['seconds_per_image']:>9.3f}{report['transformer_evaluations']:>14.1f}"
              f"{report['single']['all']:>13.1%}{report['pair']['all']:>12.1%}")
    print(json.dumps(result["cache"], indent=2))


if __name__ == "__main__":
    main()
