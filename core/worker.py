"""The engine worker: a child process that owns the loaded model and runs jobs one at a time.

The parent side (`EngineWorker`, used by the app) never imports torch. It keeps the job queue itself and
hands the child one job at a time, so pending jobs can be reordered or cancelled freely and survive the
child dying: if the child exits unexpectedly, `poll()` reports why, starts a fresh child and carries on with
the queue. Events come back as plain data (dicts), ready to be turned into Qt signals.

Events (each a dict with "type"):
  ready      {"model": {...}, "run": {...}}                 the model is loaded
  load_error {"message"}                                    the model could not be loaded
  started    {"job"}                                        a job began
  progress   {"job", "image", "count", "step", "total", "eta"}
  preview    {"job", "image", "width", "height", "rgb": bytes}   small RGB preview of the current estimate
  image      {"job", "image", "path", "settings", "evaluations"} one image finished and saved
  done       {"job"}             cancelled {"job"}             error {"job", "message"}
  crashed    {"job" or None, "message"}                     the child died; a new one is starting
  tokens     {"request", "count", "limit"}                  answer to count_tokens()
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import queue
import threading
import traceback
from dataclasses import dataclass, field


@dataclass
class Job:
    id: int
    request: dict  # GenerationRequest fields
    out_dir: str


@dataclass
class WorkerOptions:
    model: str  # a path or a registered model name
    components: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    backend: str = "torch"
    low_vram: str = "auto"
    preview: bool = True


def _exit_with_parent() -> None:
    """End this child as soon as its parent is gone, whatever ended the parent (kill -9 included).

    A spawned child holds the read end of a pipe whose write end only the parent has: it becomes readable
    when the parent dies, which `parent_process().join()` waits for.
    """
    parent = mp.parent_process()
    if parent is None:
        return

    def watch():
        parent.join()
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _child_main(options: WorkerOptions, jobs, events, cancel) -> None:
    """Runs in the child process: load once, then serve jobs until a None arrives."""
    _exit_with_parent()
    try:
        from .engine import Engine
        from .errors import Cancelled, LuminaError
        from .models.registry import find_model
        from .request import GenerationRequest, default_settings

        engine = Engine(find_model(options.model, options.components), device=options.device, dtype=options.dtype,
                        low_vram=options.low_vram, backend=options.backend)
        engine.load()
    except Exception as exc:  # a person must learn why, whatever it is
        events.put({"type": "load_error", "message": str(exc) or type(exc).__name__})
        return
    events.put({"type": "ready", "model": engine.model_info, "run": engine.run_info,
                "default_size": engine.config.sample_size * 8,
                "sampling_defaults": default_settings("official", engine.sampling_defaults)})
    from pathlib import Path

    while True:
        message = jobs.get()
        if message is None:
            return
        if message.get("kind") == "count_tokens":
            _count_tokens(engine, message, events)
            continue
        job = message["job"]
        cancel.clear()
        events.put({"type": "started", "job": job.id})
        request = GenerationRequest(**job.request)

        def on_step(index, info, job_id=job.id, count=request.count):
            events.put({"type": "progress", "job": job_id, "image": index, "count": count,
                        "step": info.step, "total": info.total, "eta": info.eta})
            if options.preview:
                rgb = engine.preview(info)
                events.put({"type": "preview", "job": job_id, "image": index, "width": rgb.shape[1],
                            "height": rgb.shape[0], "rgb": rgb.tobytes()})

        finished = []

        def on_image(result, job_id=job.id, finished=finished):
            events.put({"type": "image", "job": job_id, "image": len(finished), "path": str(result.path),
                        "settings": result.settings, "evaluations": result.evaluations})
            finished.append(result.path)

        try:
            engine.generate(request, out_dir=Path(job.out_dir), on_step=on_step, should_stop=cancel.is_set,
                            on_image=on_image)
            events.put({"type": "done", "job": job.id})
        except Cancelled:
            events.put({"type": "cancelled", "job": job.id})
        except LuminaError as exc:
            events.put({"type": "error", "job": job.id, "message": str(exc)})
        except Exception as exc:  # a bug: report it, keep serving
            events.put({"type": "error", "job": job.id,
                        "message": f"Internal error ({type(exc).__name__}: {exc})",
                        "detail": traceback.format_exc()})


def _count_tokens(engine, message, events) -> None:
    from .prompts import full_prompt, system_prompt_text

    try:
        text = full_prompt(message["prompt"], system_prompt_text(message["system_prompt"]))
        count = engine.prompts.count_tokens(text)
    except Exception:
        count = -1
    events.put({"type": "tokens", "request": message["id"], "count": count, "limit": engine.prompts.max_tokens})


@dataclass
class EngineWorker:
    """Parent-side handle: a queue of jobs and a child process that runs them."""

    options: WorkerOptions
    pending: list[Job] = field(default_factory=list)
    current: Job | None = None
    restarts: int = 0

    def __post_init__(self):
        self._context = mp.get_context("spawn")  # no fork: the GUI process's state stays out of the child
        self._ids = itertools.count(1)
        self.ready = False
        self._process = None
        self.start()

    # ---- process life --------------------------------------------------------------------------

    def start(self) -> None:
        self._jobs = self._context.Queue()
        self._events = self._context.Queue()
        self._cancel = self._context.Event()
        self._process = self._context.Process(
            target=_child_main, args=(self.options, self._jobs, self._events, self._cancel), daemon=True,
            name="lumina-engine",
        )
        self._process.start()
        self.ready = False

    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel the running job, ask the child to exit, and make sure it does."""
        if self._process is None:
            return
        self._cancel.set()
        self.pending.clear()
        try:
            self._jobs.put(None)
        except (OSError, ValueError):
            pass
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)
        self._process = None

    # ---- the queue -------------------------------------------------------------------------------

    def submit(self, request: dict, out_dir: str) -> int:
        job = Job(next(self._ids), dict(request), str(out_dir))
        self.pending.append(job)
        self._feed()
        return job.id

    def cancel(self, job_id: int) -> None:
        """A pending job is dropped; the running one stops at its next step."""
        if self.current is not None and self.current.id == job_id:
            self._cancel.set()
        self.pending = [job for job in self.pending if job.id != job_id]

    def cancel_pending(self) -> None:
        """Drop every waiting job; the running one goes on."""
        self.pending.clear()

    def move(self, job_id: int, index: int) -> None:
        job = next(j for j in self.pending if j.id == job_id)
        self.pending.remove(job)
        self.pending.insert(max(0, min(index, len(self.pending))), job)

    def count_tokens(self, prompt: str, system_prompt: str) -> int:
        """Ask for a token count; the answer arrives as a 'tokens' event with this request id."""
        request_id = next(self._ids)
        self._jobs.put({"kind": "count_tokens", "id": request_id, "prompt": prompt, "system_prompt": system_prompt})
        return request_id

    def _feed(self) -> None:
        if self.ready and self.current is None and self.pending:
            self.current = self.pending.pop(0)
            self._jobs.put({"kind": "generate", "job": self.current})

    # ---- events ----------------------------------------------------------------------------------

    def poll(self, timeout: float = 0.0) -> list[dict]:
        """Events since the last call (waiting up to `timeout` for the first); restarts a dead child."""
        events = []
        try:
            events.append(self._events.get(timeout=timeout) if timeout else self._events.get_nowait())
            while True:
                events.append(self._events.get_nowait())
        except queue.Empty:
            pass
        for event in events:
            kind = event["type"]
            if kind == "ready":
                self.ready = True
            elif kind in ("done", "cancelled", "error") and self.current and event["job"] == self.current.id:
                self.current = None
            elif kind == "load_error":
                self._process.join(5)
                self._process = None
        if self._process is not None and not self._process.is_alive() and not events:
            events.append(self._crashed())
        self._feed()
        return events

    def _crashed(self) -> dict:
        code = self._process.exitcode
        job = self.current.id if self.current else None
        self.current = None
        self.restarts += 1
        why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        self.start()
        return {"type": "crashed", "job": job,
                "message": f"The engine process stopped unexpectedly ({why}); it is being restarted and the "
                           "waiting jobs are kept."}
