"""A scripted stand-in for the generation service, so GUI tests run the app's real worker process, queue,
messages and PNG writing without loading a model.

A job plays back what the engine would send: a progress message and a preview per step, then one saved PNG
per image (written with the engine's own metadata functions, so the gallery reads it as it reads ours).
Words in brackets in the prompt script it:
  [hold]      image 1 waits at its first step until the test calls `release()` or the job is cancelled
  [hold N]    the same for image N
  [fail]      the job fails with a message a person could act on (an ERROR event)
  [crash]     the process dies at the first step, unless this is the job's run after a crash
The backend measurement waits the same way until released or cancelled, then names "onnx" the faster
(remembered in the data folder: an auto backend then starts on it).
A model whose name contains "unloadable" fails to load. `release()` lets every held job go on, now and later.
"""

from __future__ import annotations

import os
import re
import time
import zlib
from pathlib import Path

from PIL import Image

from core.errors import Cancelled, LuminaError, RequestError
from core.generation.messages import (BackendChoice, CountTokens, GenerateImages, ImageProgress, ImageSaved,
                                      MeasureBackends, Preview)
from core.jobs import EventType, Job, Reporter
from core.metadata import FORMAT, a1111_parameters, check_writable, png_info, write_png
from core.generation.prompts import TokenCount, full_prompt, system_prompt_text
from core.generation.request import GenerationRequest, default_settings
from core.generation.service import GenerationService
from core.storage import data_dir

SERVICE = "scripted_engine:ScriptedGeneration"
SIZE = 64  # the model's own size, as the tiny and demo models have
STEP_SECONDS = 0.005  # each step takes a moment, as a real one does: a cancel can arrive in between


def release() -> None:
    (data_dir() / "scripted-release").touch()


def _released() -> bool:
    return (data_dir() / "scripted-release").exists()


class ScriptedGeneration(GenerationService):
    """The real service's `remaining` (what a crash leaves to do) is kept; loading and running are scripted."""

    def load(self) -> dict:
        name = Path(self.options.model).name
        if "unloadable" in name:
            raise LuminaError(f"{name} is not a model this fake can load (scripted load error).")
        measured = (data_dir() / "scripted-measured").exists()  # remembered, as the engine remembers its choice
        backend = self.options.backend if self.options.backend != "auto" else "onnx" if measured else "torch"
        self.model = {"name": name, "hash": f"{zlib.crc32(name.encode()):08x}" * 8, "kind": "diffusers",
                      "path": str(self.options.model)}
        self.run_info = {"backend": backend, "device": "cpu", "provider": None, "dtype": "float32"}
        return {"model": self.model, "run": self.run_info, "default_size": SIZE,
                "backend_measured": self.options.backend != "auto" or measured,
                "sampling_defaults": default_settings("official")}

    def run(self, job: Job, report: Reporter) -> None:
        if isinstance(job.payload, MeasureBackends):
            self._hold(report)
            self._stop_if_asked(report)
            (data_dir() / "scripted-measured").touch()
            report.emit(EventType.RESULT, BackendChoice("onnx"))
            return
        payload: GenerateImages = job.payload
        request = GenerationRequest(**payload.request).with_defaults(6.0, SIZE)
        script = re.findall(r"\[([a-z]+)\s*(\d*)\]", request.prompt)
        held = {int(n or 1) - 1 for word, n in script if word == "hold"}
        out_dir = Path(payload.out_dir)
        check_writable(out_dir)
        seed = request.seed if request.seed is not None else 12345
        model = self.model if payload.model_path else {k: v for k, v in self.model.items() if k != "path"}
        for index in range(request.count):
            for step in range(1, request.steps + 1):
                self._stop_if_asked(report)
                time.sleep(STEP_SECONDS)
                report.emit(EventType.PROGRESS, ImageProgress(index, request.count, step, request.steps, 0.0))
                colour = (zlib.crc32(f"{seed + index}/{step}".encode()) & 0xFFFFFF).to_bytes(3, "big")
                report.emit(EventType.PREVIEW, Preview(index, request.width, request.height,
                                                       colour * (request.width * request.height)))
                if step == 1:
                    self._act_on(script, job, index in held, report)
            self._stop_if_asked(report)
            settings = {**request.to_dict(), "seed": seed + index, "count": 1,
                        "system_prompt_text": request.system_prompt_text}
            record = {"format": FORMAT, "settings": settings, "model": model,
                      "run": {**self.run_info, "transformer_evaluations": request.steps, "scripted": True}}
            image = Image.new("RGB", (request.width, request.height), tuple(colour))
            path = write_png(image, out_dir, f"scripted-{seed + index}",
                             png_info(a1111_parameters(settings, model), record))
            report.emit(EventType.RESULT, ImageSaved(index, str(path), settings, request.steps))

    def _act_on(self, script, job: Job, hold: bool, report: Reporter) -> None:
        words = {word for word, _ in script}
        if "fail" in words:
            raise RequestError("Scripted failure: this prompt asks the fake engine to fail.")
        if "crash" in words and not job.requeued:
            os._exit(3)
        if hold:
            self._hold(report)

    @staticmethod
    def _stop_if_asked(report: Reporter) -> None:
        if report.should_stop():
            raise Cancelled()

    @staticmethod
    def _hold(report: Reporter) -> None:
        while not (_released() or report.should_stop()):
            time.sleep(0.01)

    def answer(self, query: CountTokens) -> TokenCount:
        text = full_prompt(query.prompt, system_prompt_text(query.system_prompt))
        return TokenCount(len(text.split()), 256)
