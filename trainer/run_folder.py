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
  alignment.json       prompt alignment per model, when measured (the scene world)
  compare/             the checkpoint comparison: a folder of images per model, grid.json and grid.png
  exports/             checkpoints written for other tools (export-checkpoint)
  train.log            the training processes' output

No torch here: the app's Train tab reads run folders with this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from core.checked import check_record, integer, list_of, number, one_of, optional, read_record, text
from core.processes import same_process, start_time

from . import events
from .events import TrainingEvent
from core.storage import write_json_atomic


ACTIVE_STATES = ("preparing", "running", "stopping")
STATES = (*ACTIVE_STATES, "stopped", "finished", "failed")
# What each file of a run folder may hold; a field that fails its check is left out and named in problems().
STATUS_FIELDS = {"state": one_of(*STATES), "time": number(0), "started": number(0), "step": integer(0),
                 "total_steps": integer(0), "stage": text(200), "loss": number(finite=False), "eta_s": number(0),
                 "message": text(5000), "pid": integer(2)}
LAUNCHER_FIELDS = {"pid": integer(2), "pid_start": optional(number(0)), "host": text(300), "started": number(0),
                   "group": integer(2), "group_start": optional(number(0))}  # a start time is null when it was gone
PLAN_FIELDS = {"base_model": text(), "components": text(), "device": one_of("cuda", "cpu"),
               "processes": integer(1, 100_000), "gpu_ids": text(1000), "mixed_precision": one_of("no", "fp16", "bf16"),
               "accumulation": list_of(integer(1)), "parameters": integer(0)}
# A checkpoint's state/trainer_state.json, as far as the Train tab reads it.
CHECKPOINT_FIELDS = {"global_step": integer(0), "stage_name": text(200), "validation_loss": number(finite=False),
                     "validation_resolution": integer(1)}
TRANSFORMER_WEIGHTS = Path("model") / "transformer" / "diffusion_pytorch_model.safetensors"
ALIGNMENT_FILE = "alignment.json"  # prompt alignment per model ("base model", "step-NNNNNNNN"): app/train_alignment


def tail(path: Path, lines: int = 25) -> str:
    """A log's last lines ("" when there is none): what a failure message and the Train tab show."""
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class CheckpointInfo:
    path: Path
    step: int
    stage: str  # "" for checkpoints saved before it was recorded
    validation_loss: float | None
    validation_resolution: int | None
    size: int  # bytes of its transformer weights (the rest of its model folder links to the base model)


def checkpoint_info(path: Path) -> CheckpointInfo:
    record, _ = read_record(path / "state" / "trainer_state.json", CHECKPOINT_FIELDS)
    try:
        size = (path / TRANSFORMER_WEIGHTS).stat().st_size
    except OSError:
        size = 0
    step = record.get("global_step", int(path.name.removeprefix("step-")) if path.name[5:].isdigit() else 0)
    return CheckpointInfo(path, step, record.get("stage_name", ""), record.get("validation_loss"),
                          record.get("validation_resolution"), size)


def best_checkpoint(checkpoints: list[CheckpointInfo]) -> CheckpointInfo | None:
    """The lowest validation loss among those validated at the highest resolution (a loss at 512 px is no
    measure against one at 1024 px); None when none was validated."""
    validated = [c for c in checkpoints if c.validation_loss is not None and c.validation_resolution]
    if not validated:
        return None
    top = max(c.validation_resolution for c in validated)
    return min((c for c in validated if c.validation_resolution == top), key=lambda c: (c.validation_loss, -c.step))


def clean_event(record: object) -> dict | None:
    """An events.jsonl record with its known fields checked (a bad field is dropped); None when it is not an
    event at all, or a step without a step number or loss."""
    clean, _ = check_record(record, events.FIELD_CHECKS, "event")
    if "event" not in clean:
        return None
    if clean["event"] == "step" and not ("step" in clean and "loss" in clean):
        return None
    known = {k: v for k, v in record.items() if k not in events.FIELD_CHECKS}
    return {**known, **clean}


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

    def log(self, event: TrainingEvent) -> None:
        """Append one event (trainer/events.py); each line is flushed so a reader (or a crash) sees whole lines
        only. After a line cut by a crash, the event starts a line of its own (it would be lost in the cut one)."""
        line = events.record(event)
        record = {"event": line.pop("event"), "time": round(time.time(), 3), **line}
        with self.events.open("a+b") as handle:
            end = handle.seek(0, os.SEEK_END)
            cut = end > 0 and handle.seek(end - 1) >= 0 and handle.read(1) != b"\n"
            handle.write((("\n" if cut else "") + json.dumps(record) + "\n").encode("utf-8"))

    def read_events(self) -> list[dict]:
        return EventTail(self.events).read()

    def set_status(self, state: str, **fields) -> None:
        write_json_atomic(self.status_file, {"state": state, "time": round(time.time(), 3), **fields})

    def status(self) -> dict:
        """status.json's checked fields; "state" is "unknown" when it is missing or not a known state."""
        return {"state": "unknown", **read_record(self.status_file, STATUS_FIELDS)[0]}

    def read_plan(self) -> dict:
        """plan.json's checked fields ({} when it has none); problems() says what was wrong."""
        return read_record(self.plan, PLAN_FIELDS)[0]

    def problems(self) -> list[str]:
        """What is wrong with the files the app reads back (status, launcher, plan, config): the run is listed
        with them, never left out."""
        found = []
        for path, fields in ((self.status_file, STATUS_FIELDS), (self.launcher_file, LAUNCHER_FIELDS),
                             (self.plan, PLAN_FIELDS)):
            found += read_record(path, fields)[1]
        try:
            import tomllib

            if self.config.exists():
                tomllib.loads(self.config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
            found.append(f"config.toml cannot be read ({type(exc).__name__})")
        return found

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

    def complete_checkpoints(self) -> list[Path]:
        """The complete checkpoints, oldest first (half-written ones never count)."""
        return sorted(p for p in self.checkpoints.glob("step-*") if (p / "COMPLETE").exists())

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint."""
        done = self.complete_checkpoints()
        return done[-1] if done else None

    def checkpoint_list(self) -> list[CheckpointInfo]:
        """Every complete checkpoint with its step, stage and validation loss, oldest first."""
        return [checkpoint_info(path) for path in self.complete_checkpoints()]

    # ---- the launcher: is anybody running this run? ---------------------------------------------------

    @contextlib.contextmanager
    def launched(self):
        """While the body runs, launcher.json names this process: a reader can tell a live run from one
        whose processes are gone (killed, crashed, the machine restarted)."""
        write_json_atomic(self.launcher_file, {"pid": os.getpid(), "pid_start": start_time(os.getpid()),
                                               "host": socket.gethostname(), "started": round(time.time(), 3)})
        try:
            yield
        except Exception as exc:  # a failure before the training processes report their own
            if self.status().get("state", "unknown") in (*ACTIVE_STATES, "unknown"):
                self.set_status("failed", message=str(exc) or type(exc).__name__)
            raise
        finally:
            self.launcher_file.unlink(missing_ok=True)

    def note_processes(self, group: int) -> None:
        """The training processes' process group (they run in a session of their own: its leader's pid)."""
        info = self.launcher()
        if info:
            write_json_atomic(self.launcher_file, {**info, "group": group, "group_start": start_time(group)})

    def launcher(self) -> dict:
        """launcher.json's checked fields ({} when there is none or it is unusable)."""
        return read_record(self.launcher_file, LAUNCHER_FIELDS)[0]

    def alive(self) -> bool:
        """Whether the launcher that wrote launcher.json still runs: the same pid with the same start time
        (a pid alone may belong to another process by now)."""
        info = self.launcher()
        if "pid" not in info:
            return False
        if info.get("host") != socket.gethostname():
            return True  # another machine's run: it cannot be checked from here, so it is not called dead
        return same_process(info["pid"], info.get("pid_start"))

    def process_groups(self) -> list[int]:
        """The training processes' group when this run can be proven to own it (for Kill): its leader alive
        with the recorded start time, leading its group, running trainer.loop on this folder. Nothing else is
        ever signalled as a group."""
        info = self.launcher()
        group = info.get("group")
        if info.get("host") == socket.gethostname() and same_process(group, info.get("group_start")) \
                and _leads_group(group) and f"trainer.loop {self.path}" in _command_line(group):
            return [group]
        return []

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


def _leads_group(pid: int) -> bool:
    try:
        return pid > 1 and os.getpgid(pid) == pid
    except OSError:
        return False


def _command_line(pid: int) -> str:
    import psutil

    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


class EventTail:
    """Reads events.jsonl as it grows, from where it stopped: a half-written last line waits for its end,
    a line that is not JSON (or not an event) is skipped, each record's known fields are checked
    (clean_event), and every record is returned (the caller ignores kinds it does not know)."""

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
                record = clean_event(json.loads(line))
            except ValueError:  # not JSON, not UTF-8, or a line cut by a crash
                continue
            if record is not None:
                records.append(record)
        return records
