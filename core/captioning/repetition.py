"""A caption that repeats itself: a small or confused model stuck in a loop ("square square square …") runs
until its token limit. The loop is cut to its first copy and the caption flagged, so the image is marked
"needs fixing" for review instead of passing as a caption."""

from __future__ import annotations

LONGEST_UNIT = 8  # words in the repeating unit ("a red circle," is 3)
LEAST_REPEATS = 4  # copies of the unit in a row at the end before it counts as a loop


def cut_repetition(text: str) -> tuple[str, bool]:
    """(the caption without its looping tail, whether it looped)."""
    words = text.split()
    best_start, best_unit = len(words), 0
    for unit in range(1, LONGEST_UNIT + 1):
        start = len(words) - unit
        while start - unit >= 0 and words[start - unit:start] == words[start:start + unit]:
            start -= unit
        if (len(words) - start) // unit >= LEAST_REPEATS and start < best_start:
            best_start, best_unit = start, unit
    if not best_unit:
        return text, False
    return " ".join(words[:best_start + best_unit]), True
