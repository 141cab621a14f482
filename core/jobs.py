"""The generic job worker: a queue kept in the parent process over a child process that runs one service.

A *service* (generation, captioning, ...) lives in the child: it loads its model once, runs one job at a
time and reports through a `Reporter`, and answers small queries (a token count) on a thread of their own
while a job runs. The parent side (`JobWorker`) never imports torch. It keeps the queue itself and hands the
child one job at a time, so waiting jobs can be reordered or cancelled freely and survive the child dying:
`poll()` notices, says which job was interrupted, puts what was left of it back at the head of the queue
(once), starts a fresh child and carries on. Job ids are unique for the life of the process, across
restarts, model switches and services.

Every message back is an `Event`: its `type` (an `EventType`), the job it concerns, and one frozen dataclass
(each service's own are in its messages module; nothing is told apart by its keys):
  READY      the service's info (a dict)      LOAD_ERROR Failure
  STARTED    None                             PROGRESS   Progress, or the service's own
  PREVIEW    the service's own                RESULT     the service's own: one finished item
  DONE       None   CANCELLED None            ERROR      Failure
  CRASHED    Crash                            ANSWER     Answer (to a query sent with `ask`)
A job's payload and a query are the service's own dataclasses too.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import multiprocessing as mp
import os
import queue
import threading
import traceback
from dataclasses import dataclass
from enum import Enum

log = logging.getLogger("lumina.jobs")
_job_ids = itertools.count(1)  # one counter for the whole process: ids never repeat while the app runs
_request_ids = itertools.count(1)  # queries count apart, so job numbers go 1, 2, 3 however often one asks


class EventType(str, Enum):
    READY = "ready"
    LOAD_ERROR = "load_error"
    STARTED = "started"
    PROGRESS = "progress"
    PREVIEW = "preview"
    RESULT = "result"
    DONE = "done"
    CANCELLED = "cancelled"
    ERROR = "error"
    CRASHED = "crashed"
    ANSWER = "answer"


FINISHED = (EventType.DONE, EventType.CANCELLED, EventType.ERROR)


@dataclass(frozen=True)
class Event:
    type: EventType
    job: int | None = None
    data: object = None


@dataclass(frozen=True)
class Failure:
    """A job or a load that failed: a message a person can act on, and the traceback for the log."""
    message: str
    detail: str = ""


@dataclass(frozen=True)
class Crash:
    message: str
    requeued: bool  # what was left of the interrupted job is back at the head of the queue


@dataclass(frozen=True)
class Progress:
    step: int
    total: int
    eta: float  # seconds left


@dataclass(frozen=True)
class Answer:
    request: int  # the number `ask` returned
    value: object = None  # the service's answer
    error: str = ""


@dataclass
class Job:
    id: int
    payload: object  # what the service needs: one of its own job dataclasses
    label: str = ""  # what the queue shows
    results: int = 0  # items finished so far (RESULT events), so a crash can resume after them
    requeued: bool = False


class Reporter:
    """What a running job reports through; `should_stop()` turns true when the job is cancelled."""

    def __init__(self, job: Job, events, cancel):
        self.job, self._events, self._cancel = job, events, cancel

    def emit(self, kind: EventType, message: object) -> None:
        self._events.put(Event(kind, self.job.id, message))

    def progress(self, step: int, total: int, eta: float) -> None:
        self.emit(EventType.PROGRESS, Progress(step, total, eta))

    def should_stop(self) -> bool:
        return self._cancel.is_set()


class Service:
    """The child side of a worker. Subclasses load in `load()`, run jobs in `run()`, answer in `answer()`.

    `remaining(payload, finished)` runs in the parent: the part of a job still to do after `finished`
    results, when a crash interrupted it (None: nothing left, or the job cannot be resumed).
    """

    def __init__(self, options):
        self.options = options

    def load(self) -> dict:
        return {}

    def run(self, job: Job, report: Reporter) -> None:
        raise NotImplementedError

    def answer(self, query: object) -> object:
        raise NotImplementedError

    @staticmethod
    def remaining(payload: object, finished: int) -> object | None:
        return payload if finished == 0 else None


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


def _service_class(path: str) -> type[Service]:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _failure(exc: BaseException) -> Failure:
    from .errors import LuminaError

    message = str(exc) if isinstance(exc, LuminaError) else f"Internal error ({type(exc).__name__}: {exc})"
    return Failure(message or type(exc).__name__, traceback.format_exc())


def _child_main(service_path: str, options, jobs, queries, events, cancel) -> None:
    """Runs in the child process: load once, answer queries on a thread, run jobs until a None arrives."""
    _exit_with_parent()
    from .errors import Cancelled

    try:
        service = _service_class(service_path)(options)
        info = service.load()
    except Exception as exc:  # a person must learn why, whatever it is
        events.put(Event(EventType.LOAD_ERROR, data=_failure(exc)))
        return
    events.put(Event(EventType.READY, data=info))

    def answer_queries():
        while (asked := queries.get()) is not None:
            request, query = asked
            try:
                answer = Answer(request, service.answer(query))
            except Exception as exc:  # a query's failure is an answer too
                answer = Answer(request, error=_failure(exc).message)
            events.put(Event(EventType.ANSWER, data=answer))

    threading.Thread(target=answer_queries, name="queries", daemon=True).start()
    while (job := jobs.get()) is not None:
        events.put(Event(EventType.STARTED, job.id))
        try:
            service.run(job, Reporter(job, events, cancel))
            events.put(Event(EventType.DONE, job.id))
        except Cancelled:
            events.put(Event(EventType.CANCELLED, job.id))
        except Exception as exc:  # a LuminaError is the person's to fix; anything else is a bug: report, go on
            events.put(Event(EventType.ERROR, job.id, _failure(exc)))


class JobWorker:
    """Parent-side handle: a queue of jobs and a child process that runs them with one service."""

    def __init__(self, service_path: str, options, name: str = "lumina-worker"):
        self.service_path, self.options, self.name = service_path, options, name
        self.pending: list[Job] = []
        self.current: Job | None = None
        self.restarts = 0
        self.ready = False
        self._context = mp.get_context("spawn")  # no fork: the GUI process's state stays out of the child
        self._process = None
        self.start()

    # ---- process life --------------------------------------------------------------------------

    def start(self) -> None:
        self._jobs, self._queries = self._context.Queue(), self._context.Queue()
        self._events, self._cancel = self._context.Queue(), self._context.Event()
        self._process = self._context.Process(
            target=_child_main, name=self.name, daemon=True,
            args=(self.service_path, self.options, self._jobs, self._queries, self._events, self._cancel))
        self._process.start()
        self.ready = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def busy(self) -> bool:
        return self.current is not None or bool(self.pending)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel the running job, ask the child to exit, and make sure it does."""
        if self._process is None:
            return
        self._cancel.set()
        self.pending.clear()
        for channel in (self._jobs, self._queries):
            try:
                channel.put(None)
            except (OSError, ValueError):
                pass
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)
        self._process = None

    # ---- the queue -------------------------------------------------------------------------------

    def submit(self, payload: object, label: str = "") -> int:
        job = Job(next(_job_ids), payload, label)
        self.pending.append(job)
        self._feed()
        return job.id

    def adopt(self, jobs: list[Job]) -> None:
        """Take over another worker's waiting jobs (a restart with new options keeps the queue)."""
        self.pending.extend(jobs)
        self._feed()

    def cancel(self, job_id: int) -> None:
        """A pending job is dropped; the running one stops at its next step."""
        if self.current is not None and self.current.id == job_id:
            self._cancel.set()
        self.pending = [job for job in self.pending if job.id != job_id]

    def stop_current(self) -> None:
        if self.current is not None:
            self._cancel.set()

    def cancel_pending(self) -> None:
        """Drop every waiting job; the running one goes on."""
        self.pending.clear()

    def move(self, job_id: int, index: int) -> None:
        job = next((j for j in self.pending if j.id == job_id), None)
        if job is not None:
            self.pending.remove(job)
            self.pending.insert(max(0, min(index, len(self.pending))), job)

    def ask(self, query: object) -> int:
        """A small query answered while jobs run; the answer arrives as an ANSWER event's Answer with this id."""
        request = next(_request_ids)
        self._queries.put((request, query))
        return request

    def _feed(self) -> None:
        if self.ready and self.current is None and self.pending:
            self.current = self.pending.pop(0)
            # Cleared here, not when the child takes the job: a stop asked for before it does is kept.
            self._cancel.clear()
            self._jobs.put(self.current)

    # ---- events ----------------------------------------------------------------------------------

    def poll(self, timeout: float = 0.0) -> list[Event]:
        """Events since the last call (waiting up to `timeout` for the first); restarts a dead child."""
        events = []
        try:
            events.append(self._events.get(timeout=timeout) if timeout else self._events.get_nowait())
            while True:
                events.append(self._events.get_nowait())
        except queue.Empty:
            pass
        for event in events:
            if event.type == EventType.READY:
                self.ready = True
            elif event.type == EventType.RESULT and self.current and event.job == self.current.id:
                self.current.results += 1
            elif event.type in FINISHED and self.current and event.job == self.current.id:
                self.current = None
            elif event.type == EventType.LOAD_ERROR:
                self._process.join(5)
                self._process = None
            if isinstance(event.data, Failure) and event.data.detail:
                log.error("%s job %s: %s\n%s", self.name, event.job, event.data.message, event.data.detail)
        if self._process is not None and not self._process.is_alive() and not events:
            events.append(self._crashed())
        self._feed()
        return events

    def _crashed(self) -> Event:
        code = self._process.exitcode
        why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        job, self.current = self.current, None
        self.restarts += 1
        message = f"The worker process stopped unexpectedly ({why}); it is being restarted and the waiting jobs are kept."
        requeued = False
        if job is not None:
            rest = None if job.requeued else _service_class(self.service_path).remaining(job.payload, job.results)
            if rest is not None:
                self.pending.insert(0, Job(job.id, rest, job.label, requeued=True))
                requeued = True
                message += f" Job #{job.id} was interrupted; what was left of it is back at the head of the queue."
            else:
                message += f" Job #{job.id} was interrupted and is not run again" + (
                    " (it was interrupted before)." if job.requeued else ".")
        log.error(message)
        self.start()
        return Event(EventType.CRASHED, job.id if job else None, Crash(message, requeued))
