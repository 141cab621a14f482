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
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from core.storage import read_json, write_json_atomic


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

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint (half-written ones never count)."""
        done = sorted(p for p in self.checkpoints.glob("step-*") if (p / "COMPLETE").exists())
        return done[-1] if done else None
