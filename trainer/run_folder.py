"""A training run's folder: the one place the trainer, the CLI and the app's Train tab meet.

  config.toml          the resolved config (every default filled in)
  plan.json            what the launcher decided: device, processes, precision, accumulation per stage
  dataset_report.json  what each dataset held and what was skipped
  events.jsonl         one JSON object per line: steps (loss, lr, grad norm, throughput, ETA) and events
  status.json          state (preparing/running/stopping/stopped/finished/failed), step, stage, message
  tensorboard/         TensorBoard logs
  samples/             sample images per interval
  checkpoints/         step-NNNNNNNN/{model (a diffusers folder), state (optimizer, EMA, trainer state)}
  features/            pre-computed latents and caption features
  stop                 created to ask the run to save and exit
  sample-now, save-now created to ask for samples / a checkpoint at the next step (removed when done)
  launcher.json        while `lumina-studio train` runs: its pid, its training processes' group, the host
  train.log            the training processes' output

No torch here: the app's Train tab reads run folders with this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from core.storage import read_json, write_json_atomic


ACTIVE_STATES = ("preparing", "running", "stopping")


def tail(path: Path, lines: int = 25) -> str:
    """A log's last lines ("" when there is none): what a failure message and the Train tab show."""
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = self.path / "config.toml"
        self.plan = self.path / "plan.json"
        self.dataset_report = self.path / "dataset_report.json"
        self.events = self.path / "events.jsonl"
        self.status_file = self.path / "status.json"
        self.tensorboard = self.path / "tensorboard"
        self.samples = self.path / "samples"
        self.checkpoints = self.path / "checkpoints"
        self.stop_flag = self.path / "stop"
        self.sample_flag = self.path / "sample-now"
        self.save_flag = self.path / "save-now"
        self.launcher_file = self.path / "launcher.json"
        self.log_file = self.path / "train.log"

    def log(self, event: str, **fields) -> None:
        """Append one event; each line is flushed so a reader (or a crash) sees whole lines only."""
        record = {"event": event, "time": round(time.time(), 3), **fields}
        with self.events.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def read_events(self) -> list[dict]:
        if not self.events.exists():
            return []
        records = []
        for line in self.events.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:  # a line cut by a crash
                continue
        return records

    def set_status(self, state: str, **fields) -> None:
        write_json_atomic(self.status_file, {"state": state, "time": round(time.time(), 3), **fields})

    def status(self) -> dict:
        return read_json(self.status_file, {"state": "unknown"})

    def stop_requested(self) -> bool:
        return self.stop_flag.exists()

    def request_stop(self) -> None:
        self.stop_flag.touch()

    def take_flag(self, flag: Path) -> bool:
        """Whether `flag` was set; it is cleared (a request is honoured once)."""
        try:
            flag.unlink()
            return True
        except FileNotFoundError:
            return False

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint (half-written ones never count)."""
        done = sorted(p for p in self.checkpoints.glob("step-*") if (p / "COMPLETE").exists())
        return done[-1] if done else None

    # ---- the launcher: is anybody running this run? ---------------------------------------------------

    @contextlib.contextmanager
    def launched(self):
        """While the body runs, launcher.json names this process: a reader can tell a live run from one
        whose processes are gone (killed, crashed, the machine restarted)."""
        write_json_atomic(self.launcher_file, {"pid": os.getpid(), "host": socket.gethostname(),
                                               "started": round(time.time(), 3)})
        try:
            yield
        except Exception as exc:  # a failure before the training processes report their own
            if self.status().get("state", "unknown") in (*ACTIVE_STATES, "unknown"):
                self.set_status("failed", message=str(exc) or type(exc).__name__)
            raise
        finally:
            self.launcher_file.unlink(missing_ok=True)

    def note_processes(self, group: int) -> None:
        """The training processes' process group (they run in a session of their own)."""
        info = read_json(self.launcher_file, {})
        if info:
            write_json_atomic(self.launcher_file, {**info, "group": group})

    def launcher(self) -> dict:
        return read_json(self.launcher_file, {})

    def alive(self) -> bool:
        info = self.launcher()
        if not info.get("pid"):
            return False
        if info.get("host") != socket.gethostname():
            return True  # another machine's run: it cannot be checked from here, so it is not called dead
        return pid_alive(int(info["pid"]))

    def state(self) -> str:
        """What a person should be told: the status, except that a run whose processes are gone is
        "interrupted" (never "running" or "stopping" for ever), and "finished" without a checkpoint is
        "failed"."""
        state = self.status().get("state", "unknown")
        if state in ACTIVE_STATES and not self.alive():
            return "interrupted"
        if state == "finished" and self.latest_checkpoint() is None:
            return "failed"
        if state == "unknown" and self.alive():
            return "preparing"
        return state


class EventTail:
    """Reads events.jsonl as it grows, from where it stopped: a half-written last line waits for its end,
    a line that is not JSON is skipped, and every record is returned (the caller ignores kinds it does not know)."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self._partial = b""

    def read(self) -> list[dict]:
        try:
            with self.path.open("rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size < self.offset:  # the file started again (a run restarted before its first checkpoint)
                    self.offset, self._partial = 0, b""
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()  # b"" after a complete line
        records = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records
