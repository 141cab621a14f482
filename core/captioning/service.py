"""Captioning as a job-worker service: one captioner (a local model, or a server) loaded once in its own
worker child, apart from the generation engine, so a VLM and the DiT never share a process.

Jobs, queries and messages are core/captioning/messages.py's: a CaptionFolder job reports Progress (in
images), one ImageOutcome per image and a last Summary. A crash requeues the same job: the state file lets it
resume where it stopped. CountCaptionTokens is answered with a TokenCount.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import Cancelled
from ..jobs import EventType, Job, Reporter, Service
from ..generation.prompts import MAX_TOKENS, TokenCount
from .messages import CaptionFolder, CountCaptionTokens

SERVICE = "core.captioning.service:CaptionService"


@dataclass
class CaptionerOptions:
    model: str | None = None  # a model folder; None: the built-in demo captioner
    server: str | None = None  # an OpenAI-compatible server's base URL, instead of a model
    server_model: str | None = None
    api_key: str | None = field(default=None, repr=False)  # never in a log line or a traceback's locals
    concurrency: int = 4
    device: str = "auto"
    dtype: str = "auto"
    lumina_model: str | None = None  # whose tokenizer counts caption length (default: the demo model)


def open_captioner(options: CaptionerOptions):
    if options.server:
        from .server import ServerCaptioner

        return ServerCaptioner(options.server, options.server_model, options.api_key, options.concurrency)
    from .adapters import load_captioner

    return load_captioner(options.model, options.device, options.dtype)


def device_kind(captioner) -> str:
    """"cpu" or "cuda" for a local model; "server" for a server's (it uses no cores of ours)."""
    return getattr(getattr(captioner, "device", None), "type", "server")


class CaptionService(Service):
    def load(self) -> dict:
        from .tokens import lumina_token_counter

        self.captioner = open_captioner(self.options)
        self.counter = lumina_token_counter(self.options.lumina_model)
        return {"captioner": self.captioner.name, "kind": self.captioner.model_type,
                "follows_questions": self.captioner.follows_questions}

    def run(self, job: Job, report: Reporter) -> None:
        from ..cpu_budget import CpuWork
        from .job import CaptionRun, CaptionSettings

        payload: CaptionFolder = job.payload
        run = CaptionRun(CaptionSettings(**payload.settings), self.captioner, self.counter)

        def progress(done, total, eta):
            work.refresh()
            report.progress(done, total, eta)

        with CpuWork("captioning", device_kind(self.captioner)) as work:
            summary = run.run(on_result=lambda outcome: report.emit(EventType.RESULT, outcome),
                              on_progress=progress, should_stop=report.should_stop)
        report.emit(EventType.RESULT, summary)
        if summary.stopped:
            raise Cancelled()

    def answer(self, query: CountCaptionTokens) -> TokenCount:
        return TokenCount(self.counter(query.text), MAX_TOKENS)

    @staticmethod
    def remaining(payload: CaptionFolder, finished: int) -> CaptionFolder:
        return payload  # the rerun skips what the state file says is done
