"""The Train tab's view of run folders, without Qt: scanning the runs folder, a run's summary for the list,
and launching, stopping, killing and resuming `lumina-studio train` as a process group of its own, so a run
outlives the app."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from trainer.events import Step, parse
from trainer.run_folder import EventTail, RunFolder, clean_event, tail

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_LOG = "launcher.log"  # what `lumina-studio train` printed: its one-line error when it never started


@dataclass
class RunSummary:
    path: Path
    name: str
    state: str
    stage: str
    step: int
    total: int
    loss: float | None
    started: float
    duration: float
    problems: list[str]  # what is wrong with the run folder's files (the run is still listed)


def summarise(folder: Path, launcher_running: bool = False) -> RunSummary:
    """`launcher_running`: this app started the run's command and it is still checking the config and
    datasets (before it records itself in launcher.json)."""
    run = RunFolder(folder)
    status = run.status()
    state = run.state()
    if state == "unknown" and (folder / LAUNCH_LOG).exists():
        # the command is still checking before the run begins, or it stopped there (its message is in launcher.log)
        state = "starting" if launcher_running else "failed"
    started = status.get("started") or _mtime(run.config) or _mtime(folder)
    last = last_step(run) if "loss" not in status else None
    end = status.get("time", started) if state not in ("running", "preparing", "stopping") else time.time()
    return RunSummary(folder, folder.name, state, status.get("stage", last.stage if last else ""),
                      status.get("step", 0), status.get("total_steps", 0),
                      status.get("loss", last.loss if last else None), started, max(0.0, end - started),
                      run.problems())


def last_step(run: RunFolder, tail_bytes: int = 8192) -> Step | None:
    """The newest step, from the end of events.jsonl only (a list of 200 runs stays quick)."""
    import json

    try:
        with run.events.open("rb") as handle:
            handle.seek(max(0, handle.seek(0, 2) - tail_bytes))
            lines = handle.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = clean_event(json.loads(line))
        except ValueError:
            continue
        event = parse(record) if record is not None else None
        if isinstance(event, Step):
            return event
    return None


def can_resume(run: RunFolder, state: str) -> bool:
    """A run continues from its newest complete checkpoint once nothing trains it any more."""
    return state in ("stopped", "interrupted", "failed") and run.latest_checkpoint() is not None and not run.alive()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def scan_runs(runs: Path, starting: set[str] = frozenset()) -> list[RunSummary]:
    """Every run folder under `runs`, newest first (a folder counts when it has a config or a launcher log).
    `starting`: the folders whose command this app started and is still running."""
    if not runs.is_dir():
        return []
    found = [summarise(p, str(p) in starting) for p in runs.iterdir()
             if p.is_dir() and ((p / "config.toml").exists() or (p / LAUNCH_LOG).exists())]
    return sorted(found, key=lambda r: r.started, reverse=True)


def train_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lumina_studio", "train", *args]


def start_detached(run_dir: Path, *args: str) -> subprocess.Popen:
    """Run `lumina-studio train ARGS` in a session of its own (closing the app does not end it); its output
    goes to the run folder's launcher.log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log = (run_dir / LAUNCH_LOG).open("ab")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    try:
        return subprocess.Popen(train_command(*args), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=str(run_dir), start_new_session=True)
    finally:
        log.close()


def launch(config: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    return start_detached(run_dir, str(config), "--run-dir", str(run_dir), *extra)


def resume(run_dir: Path) -> subprocess.Popen:
    return start_detached(run_dir, "--resume", str(run_dir))


def kill(run_dir: Path, started: subprocess.Popen | None = None) -> bool:
    """End a run's processes now (its newest complete checkpoint stays); True when there was one to end.
    Only process groups proven to be this run's are signalled (RunFolder.process_groups); `started` is the
    launcher this app started (its own child, so its pid cannot be a stranger's while it is not reaped)."""
    run = RunFolder(run_dir)
    groups = run.process_groups()
    if started is not None and started.poll() is None:
        groups.append(started.pid)  # started in a session of its own: its pid is its group
    ended = False
    for group in dict.fromkeys(groups):
        try:
            os.killpg(group, signal.SIGKILL)
            ended = True
        except OSError:
            pass
    if run.alive():  # the launcher itself (proven by its start time), which leads no group when run from a terminal
        try:
            os.kill(run.launcher()["pid"], signal.SIGKILL)
            ended = True
        except OSError:
            pass
    return ended


__all__ = ["EventTail", "RunFolder", "RunSummary", "can_resume", "scan_runs", "launch", "resume", "kill", "tail"]
