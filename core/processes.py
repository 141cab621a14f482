"""Telling processes apart: a pid with its start time names one process for good (a pid alone may be a
stranger's after the first one ended)."""

from __future__ import annotations


def start_time(pid: int) -> float | None:
    """When the process `pid` started (None when there is none): with the pid, it names one process for good,
    where a pid alone may be a stranger's after a restart."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, ValueError, OverflowError):
        return None


def same_process(pid: int | None, started: float | None) -> bool:
    """Whether `pid` is still the process that started at `started` (as `start_time` gave it)."""
    if not pid or pid < 2 or started is None:
        return False
    now = start_time(pid)
    return now is not None and abs(now - started) < 1.0
