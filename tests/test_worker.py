"""The engine worker process: a real child process with the tiny model, driven without Qt."""

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from core.metadata import read_settings
from core.worker import EngineWorker, WorkerOptions

SMALL = dict(width=64, height=48, steps=4)


def wait_for(worker, predicate, seconds=120):
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen.extend(worker.poll(timeout=0.2))
        if predicate(seen):
            return seen
    raise AssertionError(f"timed out; events so far: {[e['type'] for e in seen]}")


def of_type(events, kind):
    return [e for e in events if e["type"] == kind]


@pytest.fixture
def worker(tiny_model):
    started = EngineWorker(WorkerOptions(model=str(tiny_model), device="cpu"))
    yield started
    started.shutdown()


def test_the_gui_side_does_not_import_torch():
    code = "import core.worker, sys; print('torch' in sys.modules)"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_jobs_progress_previews_and_cancel_of_a_pending_job(worker, tmp_path):
    wait_for(worker, lambda ev: of_type(ev, "ready"))
    ids = [worker.submit({"prompt": f"job {i}", "seed": i, **SMALL}, str(tmp_path)) for i in range(3)]
    worker.cancel(ids[1])  # still pending: dropped
    events = wait_for(worker, lambda ev: len(of_type(ev, "done")) == 2)
    assert [e["job"] for e in of_type(events, "done")] == [ids[0], ids[2]]
    progress = [e for e in of_type(events, "progress") if e["job"] == ids[0]]
    assert [e["step"] for e in progress] == [1, 2, 3, 4]
    previews = of_type(events, "preview")
    assert previews and len(previews[0]["rgb"]) == previews[0]["width"] * previews[0]["height"] * 3
    images = of_type(events, "image")
    assert [read_settings(e["path"])["prompt"] for e in images] == ["job 0", "job 2"]


def test_cancel_the_running_job_and_reorder(worker, tmp_path):
    wait_for(worker, lambda ev: of_type(ev, "ready"))
    first = worker.submit({"prompt": "long", "seed": 1, "width": 64, "height": 64, "steps": 200}, str(tmp_path))
    second = worker.submit({"prompt": "b", "seed": 2, **SMALL}, str(tmp_path))
    third = worker.submit({"prompt": "c", "seed": 3, **SMALL}, str(tmp_path))
    worker.move(third, 0)
    wait_for(worker, lambda ev: any(e["type"] == "progress" and e["job"] == first for e in ev))
    worker.cancel(first)
    events = wait_for(worker, lambda ev: len(of_type(ev, "done")) == 2)
    assert of_type(events, "cancelled")[0]["job"] == first
    assert [e["job"] for e in of_type(events, "done")] == [third, second]


def test_a_killed_worker_is_restarted_and_the_queue_kept(worker, tmp_path):
    wait_for(worker, lambda ev: of_type(ev, "ready"))
    doomed = worker.submit({"prompt": "doomed", "seed": 1, "width": 64, "height": 64, "steps": 300}, str(tmp_path))
    survivor = worker.submit({"prompt": "survivor", "seed": 2, **SMALL}, str(tmp_path))
    wait_for(worker, lambda ev: any(e["type"] == "progress" for e in ev))
    os.kill(worker.pid, signal.SIGKILL)
    events = wait_for(worker, lambda ev: of_type(ev, "done"))
    crash = of_type(events, "crashed")[0]
    assert crash["job"] == doomed and "restarted" in crash["message"] and "signal 9" in crash["message"]
    assert of_type(events, "done")[0]["job"] == survivor and worker.restarts == 1


def test_a_broken_model_reports_why(tmp_path):
    broken = EngineWorker(WorkerOptions(model=str(tmp_path / "missing"), device="cpu"))
    try:
        events = wait_for(broken, lambda ev: of_type(ev, "load_error"), seconds=60)
        assert "does not exist" in of_type(events, "load_error")[0]["message"]
        assert not of_type(events, "crashed")
    finally:
        broken.shutdown()


def test_token_count_and_job_errors(worker, tmp_path):
    wait_for(worker, lambda ev: of_type(ev, "ready"))
    request_id = worker.count_tokens("a red circle", "real")
    events = wait_for(worker, lambda ev: of_type(ev, "tokens"))
    answer = of_type(events, "tokens")[0]
    assert answer["request"] == request_id and 5 < answer["count"] < answer["limit"] == 256
    blocker = tmp_path / "file"
    blocker.write_text("x")
    job = worker.submit({"prompt": "x", **SMALL}, str(blocker / "out"))
    events = wait_for(worker, lambda ev: of_type(ev, "error"))
    assert of_type(events, "error")[0]["job"] == job and "Cannot write" in of_type(events, "error")[0]["message"]


def _process_gone(pid: int) -> bool:
    """Gone, or a zombie nobody reaped (a container's init may not): either way it runs no more."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


HOLDER = """
import sys, time
from core.worker import EngineWorker, WorkerOptions
if __name__ == "__main__":
    worker = EngineWorker(WorkerOptions(model=sys.argv[1], device="cpu"))
    while not worker.ready:
        worker.poll(timeout=0.2)
    worker.submit({"prompt": "a long job", "width": 64, "height": 48, "steps": 1000, "count": 50}, sys.argv[2])
    print(worker.pid, flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_engine_exits_when_its_parent_is_killed(tiny_model, tmp_path, how):
    import subprocess

    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    holder = subprocess.Popen([sys.executable, str(script), str(tiny_model), str(tmp_path / "out")],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    try:
        engine_pid = int(holder.stdout.readline())
        time.sleep(1)  # the job is running
        assert not _process_gone(engine_pid)
        holder.send_signal(how)
        holder.wait(10)
        deadline = time.monotonic() + 10
        while not _process_gone(engine_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _process_gone(engine_pid), "the engine child outlived its parent"
    finally:
        holder.kill()
        holder.wait()
