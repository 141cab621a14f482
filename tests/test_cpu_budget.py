"""The thread budget: the app's processes doing CPU work share the cores; one alone keeps them all."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from core import cpu_budget
from core.cpu_budget import CpuWork, share


def test_the_share_splits_what_other_programs_leave_free():
    assert share(cores=8, others=0, load=0.0, app_threads=0) == 8
    assert share(cores=8, others=1, load=0.0, app_threads=0) == 4
    assert share(cores=8, others=3, load=0.0, app_threads=0) == 2
    assert share(cores=8, others=0, load=6.0, app_threads=0) == 2  # other programs keep 6 cores busy
    assert share(cores=8, others=1, load=8.0, app_threads=8) == 4  # the load is the app's own workers
    assert share(cores=2, others=5, load=9.0, app_threads=0) == 1  # never below one


def worker(folder, seconds: float) -> subprocess.Popen:
    """Another process of the app doing CPU work: registered for `seconds`."""
    code = ("import sys, time; from pathlib import Path; from core.cpu_budget import CpuWork\n"
            f"with CpuWork('other', folder=Path({str(folder)!r})):\n"
            "    print('working', flush=True); time.sleep(float(sys.argv[1]))\n")
    process = subprocess.Popen([sys.executable, "-c", code, str(seconds)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "working"
    return process


def test_workers_share_the_cores_and_a_dead_ones_file_is_ignored(tmp_path, monkeypatch):
    monkeypatch.delenv(cpu_budget.ENVIRONMENT, raising=False)
    monkeypatch.setattr(cpu_budget, "cores", lambda: 4)
    monkeypatch.setattr(cpu_budget, "busy_threads", lambda: 0.0)
    before = torch.get_num_threads()
    try:
        with CpuWork("generation", folder=tmp_path) as work:
            assert work.threads == 4 and torch.get_num_threads() == 4  # alone: every core
            other = worker(tmp_path, 60)
            assert work.refresh(force=True) == 2 and torch.get_num_threads() == 2
            assert len(list(tmp_path.glob("*.json"))) == 2
            other.kill()
            other.wait()
            assert work.refresh(force=True) == 4  # its file is left behind, its process is gone
            assert [p.name for p in tmp_path.glob("*.json")] == [f"{os.getpid()}.json"]
            (tmp_path / "99999999.json").write_text(json.dumps({"threads": 2, "started": time.time()}))
            (tmp_path / "12.json").write_text("not json")
            assert work.refresh(force=True) == 4 and len(list(tmp_path.glob("*.json"))) == 1
        assert not list(tmp_path.glob("*.json"))  # the work ended: its file is gone
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("value, expected", [("1", 1), ("all", None)])
def test_a_fixed_count_wins_and_a_gpu_job_is_left_alone(tmp_path, monkeypatch, value, expected):
    before = torch.get_num_threads()
    monkeypatch.setenv(cpu_budget.ENVIRONMENT, value)
    try:
        with CpuWork("generation", folder=tmp_path):
            assert torch.get_num_threads() == (expected or cpu_budget.cores())
            assert not tmp_path.exists() or not list(tmp_path.glob("*.json"))
    finally:
        torch.set_num_threads(before)
    monkeypatch.delenv(cpu_budget.ENVIRONMENT)
    with CpuWork("generation", device="cuda", folder=tmp_path) as work:
        assert not work.active and work.refresh(force=True) == 0


def test_busy_threads_counts_other_programs_now():
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        deadline = time.monotonic() + 30  # a safety net: both are counted within a look or two
        while cpu_budget.busy_threads(looks=9) < 1.5:  # both, at once (not a minute later)
            assert time.monotonic() < deadline, "two busy programs were not counted"
    finally:
        for process in busy:
            process.kill()
            process.wait()


def test_a_working_process_gives_way_when_other_programs_get_busy(tmp_path, monkeypatch):
    monkeypatch.delenv(cpu_budget.ENVIRONMENT, raising=False)
    monkeypatch.setattr(cpu_budget, "cores", lambda: 4)
    busy = [0.0]
    monkeypatch.setattr(cpu_budget, "busy_threads", lambda: busy[0])
    before = torch.get_num_threads()
    try:
        with CpuWork("training", folder=tmp_path) as work:
            assert work.threads == 4
            busy[0] = 2.0  # two programs not ours start (this process's own threads wait between its steps)
            assert work.refresh(force=True) == 2
            busy[0] = 0.0
            assert work.refresh(force=True) == 4  # and it takes the cores back when they end
    finally:
        torch.set_num_threads(before)
