"""What the Train tab reads from a run folder: whether anybody still runs it, and its events as they grow."""

import json
import os
import subprocess
import sys

from trainer.run_folder import EventTail, RunFolder


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_run_whose_processes_are_gone_is_interrupted_never_running(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.set_status("running", step=3)
    assert run.state() == "interrupted"  # no launcher at all
    with run.launched():
        assert run.alive() and run.state() == "running"
        info = json.loads(run.launcher_file.read_text())
        run.launcher_file.write_text(json.dumps({**info, "pid": dead_pid()}))
        assert not run.alive() and run.state() == "interrupted"
    assert not run.launcher_file.exists()
    run.set_status("stopping")
    assert run.state() == "interrupted"
    run.set_status("finished")
    assert run.state() == "failed"  # finished, but no model to show for it
    (run.checkpoints / "step-00000003").mkdir(parents=True)
    (run.checkpoints / "step-00000003" / "COMPLETE").touch()
    assert run.state() == "finished"


def test_a_failure_before_training_starts_is_recorded(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    try:
        with run.launched():
            run.set_status("preparing")
            raise OSError("the disk is full")
    except OSError:
        pass
    assert run.status()["state"] == "failed" and run.status()["message"] == "the disk is full"
    assert run.state() == "failed"


def test_the_event_tail_reads_whole_lines_only_and_from_where_it_stopped(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.read() == []
    with path.open("w") as handle:
        handle.write('{"event": "step", "step": 1}\n{"event": "future-kind", "x": 1}\n{"event": "st')
    assert [r["event"] for r in tail.read()] == ["step", "future-kind"]
    with path.open("a") as handle:
        handle.write('ep", "step": 2}\nnot json\n{"event": "step", "step": 3}\n')
    assert [r.get("step") for r in tail.read()] == [2, 3]
    assert tail.read() == []
    path.write_text('{"event": "step", "step": 1}\n')  # a restarted run writes it again from the start
    assert [r["step"] for r in tail.read()] == [1]
    os.remove(path)
    assert tail.read() == []
