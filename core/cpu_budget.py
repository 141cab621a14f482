"""The app's CPU thread budget: its workers (the engine, the captioner, a trainer, feature preparation) share
the cores instead of each taking all of them.

PyTorch starts one OpenMP thread per core in every process, and its threads wait for each other at every
operation by spinning. Two processes doing that on the same cores keep waiting for threads the other one has
pushed off the CPU: a demo image took 17.9 s instead of 0.35 s beside a CPU training. So a process doing CPU
work registers itself for the length of the work (a file per process in the data folder's `cpu-work/`,
removed at the end, or found stale by its dead process) and sets its threads to its share: the cores less
what other programs keep busy now (the threads ready to run, less the app's own), divided among the app's
processes working now, at least one. A long job re-reads its share between steps (`CpuWork.refresh`). With
one thread a process has nothing to spin on; alone, it keeps every core and its speed.

LUMINA_STUDIO_THREADS=N fixes the count (`all`: every core, PyTorch's default: the benchmark's baseline).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

from .processes import same_process, start_time
from .storage import data_dir, write_json_atomic

ENVIRONMENT = "LUMINA_STUDIO_THREADS"


def cores() -> int:
    """The cores this process may run on (an affinity mask or a container's CPU set counts)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def busy_threads(looks: int = 5, gap: float = 0.002) -> float:
    """Threads running or ready to run now, this one not counted: Linux's count of runnable tasks
    (/proc/loadavg), the median of a few looks; elsewhere the one-minute load average (which lags a minute)."""
    try:
        counts = []
        for _ in range(looks):
            with open("/proc/loadavg", encoding="ascii") as handle:
                counts.append(int(handle.read().split()[3].split("/")[0]))
            time.sleep(gap)
        return max(0.0, statistics.median(counts) - 1)
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def share(cores: int, others: int, load: float, app_threads: int) -> int:
    """Threads for one more worker: the cores other programs leave free, split among the app's workers."""
    external = max(0, round(load - app_threads))
    return max(1, (cores - external) // (others + 1))


class CpuWork:
    """`with CpuWork("generation"):` around CPU work; `refresh()` between its steps. Nothing is done for a job
    on a GPU (device "cuda"), nor when LUMINA_STUDIO_THREADS fixes the count (it is set once instead)."""

    def __init__(self, kind: str, device: str = "cpu", folder: Path | None = None):
        self.kind, self.device = kind, device
        self.folder = folder or data_dir() / "cpu-work"
        self.entry = self.folder / f"{os.getpid()}.json"
        self.threads = 0
        self._checked = 0.0
        self._started = None  # this process's start time, for the entry: looked up once

    @property
    def active(self) -> bool:
        return self.device == "cpu" and fixed_threads() is None

    def __enter__(self) -> CpuWork:
        if self.active:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.refresh(force=True)
        elif self.device == "cpu" and fixed_threads() is not None:
            import torch

            torch.set_num_threads(fixed_threads())
        return self

    def __exit__(self, *exc) -> None:
        if self.active:
            self.entry.unlink(missing_ok=True)

    def refresh(self, force: bool = False, every: float = 2.0) -> int:
        """Sets torch's threads to this process's share now (at most every `every` seconds); returns them."""
        if not self.active or (not force and time.monotonic() - self._checked < every):
            return self.threads
        self._checked = time.monotonic()
        others = self._others()  # their threads are busy now; this process's own wait between its steps
        threads = share(cores(), len(others), busy_threads(), sum(others))
        if threads != self.threads or force:  # the entry changes only with the count
            import torch

            torch.set_num_threads(threads)
            self.threads = threads
            self._started = self._started or start_time(os.getpid())
            write_json_atomic(self.entry, {"kind": self.kind, "threads": threads, "started": self._started})
        return threads

    def _others(self) -> list[int]:
        """The thread counts of the app's other processes working now; the files of dead ones are removed."""
        found = []
        for path in self.folder.glob("*.json"):
            if path == self.entry or not path.stem.isdigit():
                continue
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
                threads = max(1, int(record["threads"]))
                alive = same_process(int(path.stem), record.get("started"))
            except (OSError, ValueError, TypeError, KeyError):
                alive = False
            if alive:
                found.append(threads)
            else:
                path.unlink(missing_ok=True)
        return found


def fixed_threads() -> int | None:
    """LUMINA_STUDIO_THREADS as a count (`all`: every core); None when unset or unreadable."""
    value = os.environ.get(ENVIRONMENT, "").strip().lower()
    if value == "all":
        return cores()
    return int(value) if value.isdigit() and int(value) > 0 else None
