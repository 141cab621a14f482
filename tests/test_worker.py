"""The engine worker process: a real child process with the tiny model, driven without Qt."""

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from core.generation.messages import CountTokens, GenerateImages, ImageProgress, ImageSaved, Preview
from core.generation.service import SERVICE, GenerationOptions, GenerationService
from core.jobs import EventType, JobWorker
from core.metadata import read_settings

SMALL = dict(width=64, height=48, steps=4)


def wait_for(worker, predicate, seconds=120):
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen.extend(worker.poll(timeout=0.2))
        if predicate(seen):
            return seen
    raise AssertionError(f"timed out; events so far: {[e.type.value for e in seen]}")


def of_type(events, kind):
    return [e for e in events if e.type == kind]


def generation_worker(model, **options):
    return JobWorker(SERVICE, GenerationOptions(model=str(model), device="cpu", **options), "test-engine")


def job(out_dir, **request):
    return GenerateImages(request, str(out_dir))


@pytest.fixture
def worker(tiny_model):
    started = generation_worker(tiny_model)
    yield started
    started.shutdown()


def test_the_gui_side_does_not_import_torch():
    code = ("import core.jobs, core.generation.service, core.generation.messages, core.captioning.messages, sys; "
            "print('torch' in sys.modules)")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_jobs_progress_previews_and_cancel_of_a_pending_job(worker, tmp_path):
    wait_for(worker, lambda ev: of_type(ev, EventType.READY))
    ids = [worker.submit(job(tmp_path, prompt=f"job {i}", seed=i, **SMALL), f"job {i}") for i in range(3)]
    worker.cancel(ids[1])  # still pending: dropped
    events = wait_for(worker, lambda ev: len(of_type(ev, EventType.DONE)) == 2)
    assert [e.job for e in of_type(events, EventType.DONE)] == [ids[0], ids[2]]
    progress = [e for e in of_type(events, EventType.PROGRESS) if e.job == ids[0]]
    assert all(isinstance(e.data, ImageProgress) for e in progress)  # typed: told apart by type, not keys
    assert [e.data.step for e in progress] == [1, 2, 3, 4]
    previews = of_type(events, EventType.PREVIEW)
    assert previews and isinstance(previews[0].data, Preview)
    assert len(previews[0].data.rgb) == previews[0].data.width * previews[0].data.height * 3
    images = of_type(events, EventType.RESULT)
    assert all(isinstance(e.data, ImageSaved) for e in images)
    assert [read_settings(e.data.path)["prompt"] for e in images] == ["job 0", "job 2"]


def test_cancel_the_running_job_and_reorder(worker, tmp_path):
    wait_for(worker, lambda ev: of_type(ev, EventType.READY))
    first = worker.submit(job(tmp_path, prompt="long", seed=1, width=64, height=64, steps=200))
    second = worker.submit(job(tmp_path, prompt="b", seed=2, **SMALL))
    third = worker.submit(job(tmp_path, prompt="c", seed=3, **SMALL))
    worker.move(third, 0)
    wait_for(worker, lambda ev: any(e.type == EventType.PROGRESS and e.job == first for e in ev))
    worker.cancel(first)
    events = wait_for(worker, lambda ev: len(of_type(ev, EventType.DONE)) == 2)
    assert of_type(events, EventType.CANCELLED)[0].job == first
    assert [e.job for e in of_type(events, EventType.DONE)] == [third, second]


def test_a_stop_asked_for_before_the_child_takes_the_job_is_kept(data_home, tmp_path):
    """Esc right after Ctrl+Enter, or quitting at once: the job is handed over but not yet started."""
    from scripted_engine import SERVICE as SCRIPTED

    worker = JobWorker(SCRIPTED, GenerationOptions(model="scripted"), "scripted")
    try:
        wait_for(worker, lambda ev: of_type(ev, EventType.READY))
        held = worker.submit(job(tmp_path, prompt="held until cancelled [hold]", seed=1, **SMALL))
        worker.stop_current()  # in the same breath: the child has not taken it yet
        events = wait_for(worker, lambda ev: of_type(ev, EventType.CANCELLED), seconds=30)
        assert of_type(events, EventType.CANCELLED)[0].job == held and not of_type(events, EventType.RESULT)
        after = worker.submit(job(tmp_path, prompt="the next one runs", seed=2, **SMALL))
        events = wait_for(worker, lambda ev: of_type(ev, EventType.DONE), seconds=30)
        assert of_type(events, EventType.DONE)[0].job == after  # the stop was for the held job only
    finally:
        worker.shutdown()


def test_a_killed_worker_is_restarted_and_the_interrupted_job_resumed(worker, tmp_path):
    wait_for(worker, lambda ev: of_type(ev, EventType.READY))
    doomed = worker.submit(job(tmp_path, prompt="doomed", seed=10, count=3, width=64, height=64, steps=40))
    survivor = worker.submit(job(tmp_path, prompt="survivor", seed=2, **SMALL))
    wait_for(worker, lambda ev: of_type(ev, EventType.RESULT))  # the first of its three images is saved
    os.kill(worker.pid, signal.SIGKILL)
    events = wait_for(worker, lambda ev: len(of_type(ev, EventType.DONE)) == 2, seconds=240)
    crash = of_type(events, EventType.CRASHED)[0]
    assert crash.job == doomed and crash.data.requeued and "signal 9" in crash.data.message
    assert f"Job #{doomed} was interrupted" in crash.data.message
    assert [e.job for e in of_type(events, EventType.DONE)] == [doomed, survivor] and worker.restarts == 1
    seeds = sorted(read_settings(p)["seed"] for p in tmp_path.glob("*.png") if read_settings(p)["prompt"] == "doomed")
    assert seeds[-2:] == [11, 12] and len(seeds) in (3, 4)  # the rest of the job, not all of it again


def test_remaining_part_of_a_generation_job():
    payload = job("/out", prompt="p", seed=5, count=4)
    assert GenerationService.remaining(payload, 1).request == {"prompt": "p", "seed": 6, "count": 3}
    assert GenerationService.remaining(payload, 4) is None
    assert GenerationService.remaining(job("/out", prompt="p", count=2), 1).request.get("seed") is None


def test_job_ids_are_unique_across_workers_and_restarts(tiny_model, tmp_path):
    first = generation_worker(tiny_model)
    ids = [first.submit(job(tmp_path, prompt="a"))]
    first.ask(CountTokens("x", "real"))  # queries take no job number
    ids.append(first.submit(job(tmp_path, prompt="b")))
    first.shutdown()
    second = generation_worker(tiny_model)
    try:
        ids.append(second.submit(job(tmp_path, prompt="c")))
    finally:
        second.shutdown()
    assert ids == list(range(ids[0], ids[0] + 3))  # unique, and consecutive


def test_a_broken_model_reports_why(tmp_path):
    broken = generation_worker(tmp_path / "missing")
    try:
        events = wait_for(broken, lambda ev: of_type(ev, EventType.LOAD_ERROR), seconds=60)
        assert "does not exist" in of_type(events, EventType.LOAD_ERROR)[0].data.message
        assert not of_type(events, EventType.CRASHED)
    finally:
        broken.shutdown()


def test_token_count_answers_while_a_job_runs_and_job_errors(worker, tmp_path):
    wait_for(worker, lambda ev: of_type(ev, EventType.READY))
    long = worker.submit(job(tmp_path, prompt="long", seed=1, width=64, height=64, steps=300))
    wait_for(worker, lambda ev: of_type(ev, EventType.PROGRESS))
    request_id = worker.ask(CountTokens("a red circle", "real"))
    events = wait_for(worker, lambda ev: of_type(ev, EventType.ANSWER))
    answer = of_type(events, EventType.ANSWER)[0].data
    assert answer.request == request_id and 5 < answer.value.count < answer.value.limit == 256
    assert worker.current is not None and worker.current.id == long  # answered while the job ran
    worker.cancel(long)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    bad = worker.submit(job(blocker / "out", prompt="x", **SMALL))
    events = wait_for(worker, lambda ev: of_type(ev, EventType.ERROR))
    error = of_type(events, EventType.ERROR)[0]
    assert error.job == bad and "Cannot write" in error.data.message


def _process_gone(pid: int) -> bool:
    """Gone, or a zombie nobody reaped (a container's init may not): either way it runs no more."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


HOLDER = """
import sys, time
from core.generation.messages import GenerateImages
from core.generation.service import SERVICE, GenerationOptions
from core.jobs import JobWorker
if __name__ == "__main__":
    worker = JobWorker(SERVICE, GenerationOptions(model=sys.argv[1], device="cpu"))
    while not worker.ready:
        worker.poll(timeout=0.2)
    worker.submit(GenerateImages({"prompt": "a long job", "width": 64, "height": 48, "steps": 1000, "count": 50},
                                 sys.argv[2]))
    while not any(event.type.value == "progress" for event in worker.poll(timeout=0.2)):
        pass
    print(worker.pid, flush=True)  # the job is running
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
