"""Generation as a job-worker service: the DiT engine loaded once in the worker child.

Jobs, queries and messages are messages.py's: a GenerateImages job reports ImageProgress,
Preview and one ImageSaved per image; MeasureBackends answers with BackendChoice; CountTokens is answered
(TokenCount) from the tokenizer alone, while a job runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..cpu_budget import CpuWork
from .messages import (BackendChoice, CountTokens, GenerateImages, ImageProgress, ImageSaved,
                                  MeasureBackends, Preview)
from ..jobs import EventType, Job, Reporter, Service
from .prompts import TokenCount

SERVICE = "core.generation.service:GenerationService"


@dataclass
class GenerationOptions:
    model: str  # a path or a registered model name
    components: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    backend: str = "torch"
    low_vram: str = "auto"
    preview: bool = True


class GenerationService(Service):
    def load(self) -> dict:
        from .engine import Engine
        from ..models.registry import find_model
        from .request import default_settings

        options = self.options
        self.engine = Engine(find_model(options.model, options.components), device=options.device,
                             dtype=options.dtype, low_vram=options.low_vram, backend=options.backend,
                             measure_backends=False)
        self.engine.load()
        return {"model": self.engine.model_info, "run": self.engine.run_info,
                "backend_measured": self.engine.backend_measured,
                "default_size": self.engine.config.sample_size * 8,
                "sampling_defaults": default_settings("official", self.engine.sampling_defaults)}

    def run(self, job: Job, report: Reporter) -> None:
        from .request import GenerationRequest

        if isinstance(job.payload, MeasureBackends):
            report.emit(EventType.RESULT, BackendChoice(self.engine.measure_backends(report.should_stop)))
            return
        payload: GenerateImages = job.payload
        request = GenerationRequest(**payload.request)

        def on_step(index, info):
            work.refresh()
            report.emit(EventType.PROGRESS, ImageProgress(index, request.count, info.step, info.total, info.eta))
            if self.options.preview:
                rgb = self.engine.preview(info)
                report.emit(EventType.PREVIEW, Preview(index, rgb.shape[1], rgb.shape[0], rgb.tobytes()))

        finished = []

        def on_image(result):
            report.emit(EventType.RESULT, ImageSaved(len(finished), str(result.path), result.settings,
                                                     result.evaluations))
            finished.append(result.path)

        with CpuWork("generation", self.engine.device.type) as work:
            self.engine.generate(request, out_dir=Path(payload.out_dir), on_step=on_step,
                                 should_stop=report.should_stop, on_image=on_image, model_path=payload.model_path)

    def answer(self, query: CountTokens) -> TokenCount:
        from .prompts import full_prompt, system_prompt_text

        text = full_prompt(query.prompt, system_prompt_text(query.system_prompt))
        return TokenCount(self.engine.prompts.count_tokens(text), self.engine.prompts.max_tokens)

    @staticmethod
    def remaining(payload: GenerateImages | MeasureBackends, finished: int) -> GenerateImages | None:
        """After `finished` images, the rest of the job: the same request for the images not yet made."""
        if isinstance(payload, MeasureBackends):
            return payload if finished == 0 else None
        request = dict(payload.request)
        left = request.get("count", 1) - finished
        if left <= 0:
            return None
        if request.get("seed") is not None:
            request["seed"] += finished
        return replace(payload, request={**request, "count": left})
