"""What the Train tab reads from a run folder: whether anybody still runs it, and its events as they grow."""

import json
import os
import subprocess
import sys

from trainer.events import Resumed, Step
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
        handle.write('{"event": "step", "step": 1, "loss": 1}\n{"event": "future-kind", "x": 1}\n{"event": "st')
    assert [r["event"] for r in tail.read()] == ["step", "future-kind"]
    with path.open("a") as handle:
        handle.write('ep", "step": 2, "loss": 1}\nnot json\n{"event": "step", "step": 3, "loss": 1}\n')
    assert [r.get("step") for r in tail.read()] == [2, 3]
    assert tail.read() == []
    path.write_text('{"event": "step", "step": 1, "loss": 1}\n')  # a restarted run writes it again from the start
    assert [r["step"] for r in tail.read()] == [1]
    os.remove(path)
    assert tail.read() == []


BAD_STATUSES = [{"state": "running", "step": "abc"}, {"state": "finished", "time": "yesterday"}, {"state": {}},
                ["a", "list"], {"state": "running", "loss": "low", "total_steps": -3, "stage": 7, "started": []}]


def test_a_run_folder_with_wrong_types_is_listed_with_what_is_wrong(tmp_path):
    from app.train_runs import scan_runs

    runs = tmp_path / "runs"
    for number, status in enumerate(BAD_STATUSES):
        run = RunFolder(runs / f"bad-{number}")
        run.path.mkdir(parents=True)
        run.config.write_text("name = 'x'\n")
        run.status_file.write_text(json.dumps(status))
    good = RunFolder(runs / "good")
    good.path.mkdir()
    good.config.write_text("name = 'x'\n")
    good.set_status("stopped", step=4, total_steps=10, loss=0.5)
    odd = RunFolder(runs / "odd-files")
    odd.path.mkdir()
    odd.config.write_bytes(b"\xff\xfe not toml")
    odd.plan.write_text('{"processes": "two", "accumulation": [1, "x"]}')
    odd.launcher_file.write_text('{"pid": "me", "group": 1}')
    odd.events.write_bytes(b'\xff\xfe\n{"event": "step", "step": "a", "loss": 1}\n{"event": 5}\n'
                           b'{"event": "step", "step": 2, "loss": 0.5, "lr": "fast"}\n')

    found = {summary.name: summary for summary in scan_runs(runs)}
    assert set(found) == {"good", "odd-files", *(f"bad-{n}" for n in range(len(BAD_STATUSES)))}
    assert found["good"].problems == [] and (found["good"].step, found["good"].loss) == (4, 0.5)
    assert "status.json: 'step' is not a whole number" in found["bad-0"].problems
    assert "status.json: 'time' is not a finite number" in found["bad-1"].problems
    assert found["bad-2"].state == "unknown" and found["bad-3"].problems == ["status.json is not a JSON object"]
    assert len(found["bad-4"].problems) == 4 and found["bad-4"].step == 0
    odd_problems = " ".join(found["odd-files"].problems)
    for expected in ("config.toml cannot be read", "plan.json: 'processes'", "launcher.json: 'pid'",
                     "launcher.json: 'group' is out of range"):
        assert expected in odd_problems
    assert [(r["event"], r["step"], "lr" in r) for r in odd.read_events()] == [("step", 2, False)]
    assert RunFolder(runs / "odd-files").read_plan() == {}


def live_stranger() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)


def test_kill_signals_only_a_group_proven_to_be_the_runs(tmp_path, monkeypatch):
    from app import train_runs

    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.set_status("running", step=3)
    signalled = []
    monkeypatch.setattr(train_runs.os, "killpg", lambda group, sig: signalled.append(group))
    monkeypatch.setattr(train_runs.os, "kill", lambda pid, sig: signalled.append(-pid))

    run.launcher_file.write_text(json.dumps({"pid": os.getpid(), "group": 1, "host": os.uname().nodename}))
    assert run.process_groups() == [] and not run.alive()  # no start time: nothing proves it is this run's
    assert run.state() == "interrupted"
    assert not train_runs.kill(run.path) and signalled == []

    stranger = live_stranger()  # a stale launcher.json whose pid (and group) now belong to another process
    try:
        run.launcher_file.write_text(json.dumps({"pid": stranger.pid, "pid_start": 1000.0, "group": stranger.pid,
                                                 "group_start": 1000.0, "host": os.uname().nodename}))
        assert run.state() == "interrupted" and not run.alive()
        assert not train_runs.kill(run.path) and signalled == []
        # the right start time, but the stranger does not run trainer.loop on this folder
        from core.processes import start_time

        run.launcher_file.write_text(json.dumps({"pid": 999_999_999, "group": stranger.pid,
                                                 "group_start": start_time(stranger.pid),
                                                 "host": os.uname().nodename}))
        assert run.process_groups() == []
    finally:
        monkeypatch.undo()  # os.kill itself was replaced
        stranger.kill()
        stranger.wait()


def test_kill_ends_the_training_group_and_the_launcher_it_can_prove(tmp_path):
    from app import train_runs
    from core.processes import start_time

    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.set_status("running", step=3)
    launcher = live_stranger()  # stands in for `lumina-studio train`, which wrote launcher.json
    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "trainer.loop",
                                str(run.path)], start_new_session=True)
    try:
        run.launcher_file.write_text(json.dumps({"pid": launcher.pid, "pid_start": start_time(launcher.pid),
                                                 "host": os.uname().nodename}))
        run.note_processes(trainer.pid)
        assert run.state() == "running" and run.process_groups() == [trainer.pid]
        assert train_runs.kill(run.path)
        assert trainer.wait(timeout=10) == -9 and launcher.wait(timeout=10) == -9
        assert run.state() == "interrupted"
    finally:
        trainer.kill()
        launcher.kill()


def test_an_event_after_a_line_cut_by_a_crash_is_not_lost(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.log(Step(1, loss=0.5))
    with run.events.open("a") as handle:
        handle.write('{"event": "step", "step": 2, "lo')  # the process was killed mid-line
    run.log(Resumed(1, "step-00000001"))
    assert [e["event"] for e in run.read_events()] == ["step", "resumed"]


def test_every_kind_of_event_reads_back_as_written_and_a_newer_kind_is_left_out(tmp_path):
    """The trainer writes typed events; the Train tab reads them back with the same classes (trainer/events.py)."""
    import json

    from trainer import events

    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    written = [events.Step(3, "low", 0, 3, 0.25, 1e-4, 0.5, 8.0, 12.0, 256),
               events.StageStart("low", 0, 0, 256, 8, 2, 4, 1, 100, 1e-4, 0),
               events.Validation(3, "low", 0.125, 256, 5, 0.4, "ema"), events.Samples(3, "low", ["samples/a.png"]),
               events.Checkpoint(3, "checkpoints/step-00000003", None),
               events.CheckpointDamaged("step-00000002", "cannot be read"), events.Resumed(3, "step-00000003"),
               events.Stopped(3, "stop requested"), events.Finished(4), events.Failed("CUDA error")]
    assert {type(e) for e in written} == set(events.KINDS.values())
    for event in written:
        run.log(event)
    with run.events.open("a") as handle:
        handle.write(json.dumps({"event": "from-a-newer-trainer", "time": 1.0}) + "\n")
        handle.write(json.dumps({"event": "step", "time": 1.0, "step": 9, "loss": 0.5, "grad_norm": "x"}) + "\n")
    read = [events.parse(record) for record in run.read_events()]
    assert read[:len(written)] == written and read[len(written)] is None
    assert read[-1] == events.Step(9, loss=0.5)  # a damaged field is left out: its default stands


def test_every_event_field_has_one_check_and_a_damaged_value_is_left_out(tmp_path):
    from dataclasses import fields

    from trainer import events

    named = {f.name for kind in events.KINDS.values() for f in fields(kind)}
    assert set(events.FIELD_CHECKS) == named | {"event", "time"}  # no field unchecked, no check for nothing
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.events.write_text(json.dumps({"event": "checkpoint", "time": 1.0, "step": 4, "path": "checkpoints/a",
                                      "replicas_in_sync": "yes"}) + "\n")
    [record] = run.read_events()
    assert events.parse(record) == events.Checkpoint(step=4, path="checkpoints/a", replicas_in_sync=None)
