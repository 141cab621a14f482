"""Prompt alignment per checkpoint, for runs on the scene world (the demo model fine-tuned on scenes): each
checkpoint's model, and the base model for comparison, go through `lumina-studio evaluate` (the core.scenes
evaluator) in a process of its own; the scores are kept in the run folder's alignment.json. So a person sees
fine-tuning change what the model draws, not only its loss."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PySide6.QtCore import QObject, QProcess, Signal

from core.storage import read_json, write_json_atomic
from trainer.run_folder import RunFolder

ALIGNMENT_FILE = "alignment.json"
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

    def __init__(self, prompts: int = PROMPTS, parent=None):
        super().__init__(parent)
        self.prompts = prompts
        self.process: QProcess | None = None
        self.queue: list[tuple[RunFolder, str, str]] = []

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
        return self.process is not None and self.process.state() != QProcess.NotRunning

    def _next(self) -> None:
        if self.busy or not self.queue:
            return
        run, name, model = self.queue[0]
        if model != "demo" and not Path(model).is_dir():  # pruned since (keep_checkpoints): nothing to measure
            self.queue.pop(0)
            self._next()
            return
        self.process = QProcess(self)
        self.process.finished.connect(lambda code, _status: self._done(code))
        self.process.start(sys.executable, ["-m", "lumina_studio", "evaluate", "--model", model, "--count",
                                            str(self.prompts), "--device", "cpu", "--json"])

    def _done(self, code: int) -> None:
        run, name, _ = self.queue.pop(0)
        output = bytes(self.process.readAllStandardOutput()).decode("utf-8", "replace")
        try:
            report = json.loads(output) if code == 0 else None
        except ValueError:
            report = None
        if report is None:
            error = bytes(self.process.readAllStandardError()).decode("utf-8", "replace").strip().splitlines()
            self.failed.emit(f"alignment of {name} could not be measured: {error[-1] if error else code}")
        else:
            scores = self.scores(run)
            scores[name] = report
            write_json_atomic(run.path / ALIGNMENT_FILE, scores)
            self.updated.emit(str(run.path))
        self._next()

    def stop(self) -> None:
        self.queue.clear()
        if self.busy:
            self.process.kill()
            self.process.waitForFinished(5000)


