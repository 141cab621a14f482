"""The A1111 `parameters` parser's time against input size, with two references timed in the same run.

Inputs of 1 KB ... 1 MB in three shapes: a long run of spaces inside the settings line (the input that
made the previous regex parser quadratic: 100 KB took ~60 s), a settings line of many pairs, and a long
prompt. References: `json.loads` of a JSON string of the same size (linear, C speed), and the previous
regex parser (kept here for the comparison only; run up to 16 KB, beyond that it takes minutes).

    python bench/bench_metadata.py     (writes bench/out/bench_metadata.json)
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.other_tools import parse_a1111  # noqa: E402
from results import save_results  # noqa: E402

SIZES = (1 << 10, 16 << 10, 100 << 10, 1 << 20)
SHAPES = {
    "spaces in the settings line": lambda n: "p\nSteps: 4, " + " " * n + "x",
    "many pairs": lambda n: "p\nSteps: 4, " + ", ".join(f"Key{i}: v{i}" for i in range(n // 10)),
    "long prompt": lambda n: "a red fox in the snow, " * (n // 23) + "\nSteps: 4, Seed: 1, Size: 64x64",
}
_OLD_PAIR = re.compile(r'\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def old_parse(text: str) -> None:
    """The previous parser's pair matching, the part that was quadratic."""
    lines = text.strip().split("\n")
    if lines and _OLD_PAIR.match(lines[-1]) and "Steps:" in lines[-1]:
        _OLD_PAIR.findall(lines.pop())


def timed(function, text: str) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        try:
            function(text)
        except ValueError:
            pass
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    rows = []
    for shape, make in SHAPES.items():
        for size in SIZES:
            text = make(size)
            row = {"shape": shape, "bytes": len(text), "parse_s": timed(parse_a1111, text),
                   "json_loads_s": timed(json.loads, json.dumps(text)),
                   "old_parser_s": timed(old_parse, text) if size <= 16 << 10 else None}
            row["parse_per_mb_s"] = row["parse_s"] / len(text) * (1 << 20)
            rows.append(row)
            old = f"{row['old_parser_s']:.4f}" if row["old_parser_s"] is not None else "-"
            print(f"{shape:28s} {len(text):>9,} B  parse {row['parse_s']:.4f} s  json.loads {row['json_loads_s']:.4f} s"
                  f"  old parser {old} s")
    save_results("bench_metadata", rows)


if __name__ == "__main__":
    main()
