"""Prompt alignment per checkpoint, for runs on the scene world (the demo model fine-tuned on scenes): each
checkpoint's model, and the base model for comparison, go through `lumina-studio evaluate` (the core.scenes
evaluator) in a process of its own; the scores are kept in the run folder's alignment.json. So a person sees
fine-tuning change what the model draws, not only its loss."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from PySide6.QtCore import QObject, QProcess, Signal

from core.storage import read_json, write_json_atomic
from trainer.run_folder import ALIGNMENT_FILE, RunFolder

PROMPTS = 60  # about 36 single shapes and 24 pairs: a minute on a CPU per checkpoint for the demo model


def on_scene_world(run: RunFolder) -> bool:
    try:
        import tomllib

        return tomllib.loads(run.config.read_text(encoding="utf-8")).get("base_model") == "demo"
    except (OSError, ValueError):
        return False


def describe(scores: dict) -> str:
    rows = []
    for name, report in scores.items():
        single, pair = report.get("single", {}), report.get("pair", {})
        rows.append(f"{name}: single shapes {single.get('all', 0):.0%} (colour and shape "
                    f"{single.get('colour_and_shape', 0):.0%}), pairs {pair.get('all', 0):.0%}")
    return "\n".join(rows)


class AlignmentMeter(QObject):
    updated = Signal(str)  # the run folder whose scores changed
    failed = Signal(str)
    progress = Signal(str)  # what is measured now, with its count and the time left

    def __init__(self, prompts: int = PROMPTS, parent=None):
        super().__init__(parent)
        self.prompts = prompts
        self.process: QProcess | None = None
        self.queue: list[tuple[RunFolder, str, str]] = []
        self.measured = 0  # models finished since the queue was last empty (for "model 2 of 3")
        self._started = 0.0
        self._errors = b""

    def scores(self, run: RunFolder) -> dict:
        return read_json(run.path / ALIGNMENT_FILE, {})

    def measure(self, run: RunFolder) -> int:
        """Queue the base model and every complete checkpoint not measured yet; returns how many."""
        done = self.scores(run)
        checkpoints = [c for c in sorted(run.checkpoints.glob("step-*")) if (c / "COMPLETE").exists()]
        wanted = [("base model", "demo")] + [(c.name, str(c / "model")) for c in checkpoints]
        new = [(run, name, model) for name, model in wanted if name not in done]
        self.queue += [item for item in new if item not in self.queue]
        self._next()
        return len(new)

    @property
    def busy(self) -> bool:
        """Measuring, or models waiting to be measured."""
        return bool(self.queue) or self._running

    @property
    def _running(self) -> bool:
        return self.process is not None and self.process.state() != QProcess.NotRunning

    def _label(self, name: str) -> str:
        return f"measuring {name} (model {self.measured + 1} of {self.measured + len(self.queue)})"

    def _next(self) -> None:
        if self._running:
            return
        if not self.queue:
            self.measured = 0
            return
        run, name, model = self.queue[0]
        if model != "demo" and not Path(model).is_dir():  # pruned since (keep_checkpoints): nothing to measure
            self.queue.pop(0)
            self._next()
            return
        self.process = QProcess(self)
        self.process.finished.connect(lambda code, _status: self._done(code))
        self.process.readyReadStandardError.connect(self._read_progress)
        self._started, self._errors = time.monotonic(), b""
        self.progress.emit(f"{self._label(name)}…")
        self.process.start(sys.executable, ["-m", "lumina_studio", "evaluate", "--model", model, "--count",
                                            str(self.prompts), "--device", "cpu", "--json"])

    def _read_progress(self) -> None:
        """`evaluate --json` writes {"done", "total"} per image on stderr; anything else is kept for an error."""
        name = self.queue[0][1] if self.queue else ""
        for line in bytes(self.process.readAllStandardError()).splitlines():
            try:
                step = json.loads(line)
                done, total = int(step["done"]), int(step["total"])
            except (ValueError, KeyError, TypeError):
                self._errors += line + b"\n"
                continue
            left = (time.monotonic() - self._started) / max(done, 1) * (total - done)
            self.progress.emit(f"{self._label(name)}: {done}/{total} prompts, {int(left) // 60}:{int(left) % 60:02d} left")

    def _done(self, code: int) -> None:
        self._read_progress()
        run, name, _ = self.queue.pop(0)
        self.measured += 1
        output = bytes(self.process.readAllStandardOutput()).decode("utf-8", "replace")
        try:
            report = json.loads(output) if code == 0 else None
        except ValueError:
            report = None
        if report is None:
            error = self._errors.decode("utf-8", "replace").strip().splitlines()
            self.failed.emit(f"alignment of {name} could not be measured: {error[-1] if error else code}")
        else:
            scores = self.scores(run)
            scores[name] = report
            write_json_atomic(run.path / ALIGNMENT_FILE, scores)
            self.updated.emit(str(run.path))
        self._next()

    def stop(self) -> None:
        """Stop measuring: the model being measured and the waiting ones are dropped (scores kept so far stay)."""
        self.queue.clear()
        if self._running:
            self.process.finished.disconnect()
            self.process.kill()
            self.process.waitForFinished(5000)
        self.measured = 0


