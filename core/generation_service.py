"""Generation as a job-worker service: the DiT engine loaded once in the worker child.

Job payload: {"request": GenerationRequest fields, "out_dir": folder, "model_path": store the model's path
in the images too}, or {"kind": "measure_backends"}
(time both backends for `--backend auto` and remember the faster: RESULT {"backend_choice"}). Reports PROGRESS (with "image" and
"count"), PREVIEW ({"image", "width", "height", "rgb": bytes}) and one RESULT per saved image ({"image",
"path", "settings", "evaluations"}). Query {"kind": "count_tokens", "prompt", "system_prompt"} answers
{"count", "limit"} from the tokenizer alone, while a job runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .cpu_budget import CpuWork
from .jobs import EventType, Job, Reporter, Service

SERVICE = "core.generation_service:GenerationService"


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
        from .models.registry import find_model
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

        if job.payload.get("kind") == "measure_backends":
            report.emit(EventType.RESULT, backend_choice=self.engine.measure_backends(report.should_stop))
            return

        request = GenerationRequest(**job.payload["request"])

        def on_step(index, info):
            work.refresh()
            report.progress(info.step, info.total, info.eta, image=index, count=request.count)
            if self.options.preview:
                rgb = self.engine.preview(info)
                report.emit(EventType.PREVIEW, image=index, width=rgb.shape[1], height=rgb.shape[0], rgb=rgb.tobytes())

        finished = []

        def on_image(result):
            report.emit(EventType.RESULT, image=len(finished), path=str(result.path), settings=result.settings,
                        evaluations=result.evaluations)
            finished.append(result.path)

        with CpuWork("generation", self.engine.device.type) as work:
            self.engine.generate(request, out_dir=Path(job.payload["out_dir"]), on_step=on_step,
                                 should_stop=report.should_stop, on_image=on_image,
                                 model_path=job.payload.get("model_path", False))

    def answer(self, query: dict) -> dict:
        from .prompts import full_prompt, system_prompt_text

        text = full_prompt(query["prompt"], system_prompt_text(query["system_prompt"]))
        return {"count": self.engine.prompts.count_tokens(text), "limit": self.engine.prompts.max_tokens}

    @staticmethod
    def remaining(payload: dict, finished: int) -> dict | None:
        """After `finished` images, the rest of the job: the same request for the images not yet made."""
        request = dict(payload["request"])
        left = request.get("count", 1) - finished
        if left <= 0:
            return None
        if request.get("seed") is not None:
            request["seed"] += finished
        return {**payload, "request": {**request, "count": left}}
