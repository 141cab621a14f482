"""The training process (one per GPU, started by `accelerate launch`; see trainer/launch.py).

    python -m trainer.loop RUN_DIR [--resume]

Reads the resolved config and plan from the run folder, trains every stage in order and writes
events, samples and checkpoints there. Stage switches keep the model, EMA and optimizer state and
change the buckets, batch and learning rate. A stop request (SIGTERM/SIGINT or the `stop` file)
saves a checkpoint and exits cleanly.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

import torch

from core.cpu_budget import CpuWork
from core.errors import unreadable_reason
from core.models import loader
from core.models.sources import resolve_source

from . import checkpointing
from .batches import StageData, _generator
from .block_swap import BlockSwap
from .config import RunConfig, load_config
from .ema import EMA, full_tensor
from .events import (Checkpoint, CheckpointDamaged, Failed, Finished, Resumed, Samples, StageStart, Step, Stopped,
                     TrainingEvent, Validation)
from .low_memory import fuse_backward, training_optimizer
from .features import FeatureCache
from .objective import flow_matching_loss, noisy_inputs
from .run_folder import RunFolder
from .samples import SampleMaker
from .validation import validation_loss, weights_in


def stage_lr(stage, step: int) -> float:
    """The learning rate of a stage's step (0-based): a linear warm-up, then constant or a decay that
    reaches 0 after the stage's last step."""
    if step < stage.warmup_steps:
        return stage.lr * (step + 1) / stage.warmup_steps
    if stage.lr_schedule == "constant":
        return stage.lr
    progress = (step - stage.warmup_steps + 1) / (stage.steps - stage.warmup_steps + 1)
    if stage.lr_schedule == "linear":
        return stage.lr * (1 - progress)
    return stage.lr * 0.5 * (1 + math.cos(math.pi * progress))


class StopSignal:
    """Remembers a SIGTERM/SIGINT so the loop can finish its step, save and exit."""

    def __init__(self):
        self.received = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.received = True


class Trainer:
    def __init__(self, run: RunFolder, resume: bool):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        self.run = run
        self.config: RunConfig = load_config(run.config)
        self.plan = json.loads(run.plan.read_text())
        self.stop_signal = StopSignal()
        self.accelerator = Accelerator(
            cpu=self.plan["device"] == "cpu",
            mixed_precision=self.plan["mixed_precision"],
            log_with="tensorboard",
            project_config=ProjectConfiguration(project_dir=str(run.path), logging_dir=str(run.tensorboard)),
        )
        acc = self.accelerator
        self.world = acc.num_processes
        self.rank = acc.process_index
        source = resolve_source(self.plan["base_model"], self.plan.get("components") or None)
        self.components = source.components
        memory = self.config.memory
        self.weight_dtype = torch.bfloat16 if memory.weights == "bf16" else torch.float32
        model = loader.load_dit(source, self.weight_dtype, torch.device("cpu"))
        model.train().requires_grad_(True)
        model.activation_checkpointing = self.config.activation_checkpointing
        self.model_config = model.config
        optimizer = training_optimizer(model, self.config)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.fused_norms: list[float] = []  # squared gradient norms the fused backward pass saw this step
        swapped = self._swapped_blocks(memory.blocks_to_swap)
        self.swap = BlockSwap(swapped, acc.device) if swapped else None  # after prepare: it moved the model
        if memory.fused_backward:
            fuse_backward(self._inner, optimizer, self.config.optimizer.grad_clip, self.fused_norms, self.swap)
        self.one_by_one = optimizer if self.config.steps_one_by_one else None
        self.ema = EMA(self._inner, self.config.ema_decay, torch.device("cpu") if memory.ema_on_cpu else None) \
            if self.config.ema_decay > 0 else None
        self.cache = FeatureCache(run.path)
        self.state = {"global_step": 0, "stage": 0, "step_in_stage": 0}
        if resume:
            self._resume()
        if acc.is_main_process:
            acc.init_trackers("train")
        self.samples = SampleMaker(self.components, self.config.samples, acc.device,
                                   torch.bfloat16 if self.plan["mixed_precision"] == "bf16" else torch.float32)

    @property
    def _inner(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def _swapped_blocks(self, count: int) -> list[torch.nn.Module]:
        layers = list(self._inner.layers)
        if count >= len(layers):
            raise ValueError(f"[memory] blocks_to_swap = {count}: the model has {len(layers)} joint blocks; "
                             f"swap at most {len(layers) - 1}.")
        return layers[len(layers) - count:] if count else []

    # ---- the run ---------------------------------------------------------------------------

    def train(self) -> str:
        """Trains until the end or a stop request; returns "finished" or "stopped"."""
        with CpuWork("training", self.plan["device"]) as self.cpu_work:  # share the cores with the app's others
            return self._train()

    def _train(self) -> str:
        started = time.perf_counter()
        first_step = self.state["global_step"]
        total = self.config.total_steps
        for stage_index in range(self.state["stage"], len(self.config.stages)):
            stage = self.config.stages[stage_index]
            self.state["stage"] = stage_index
            accumulation = self.plan["accumulation"][stage_index]
            manifest = self.cache.manifest(stage_index)
            data = StageData(self.cache, manifest, stage.micro_batch_size, self.config.seed, stage_index)
            self._stage_start(stage_index, stage, accumulation, manifest)
            while self.state["step_in_stage"] < stage.steps:
                self.cpu_work.refresh()
                tick = time.perf_counter()
                loss, grad_norm, lr, samples_done = self._step(stage, stage_index, data, accumulation)
                self.state["step_in_stage"] += 1
                self.state["global_step"] += 1
                step = self.state["global_step"]
                elapsed = time.perf_counter() - started
                done_here = step - first_step
                record = Step(step, stage.name, stage_index, self.state["step_in_stage"], loss, lr, grad_norm,
                              samples_done / (time.perf_counter() - tick), elapsed / done_here * (total - step),
                              stage.resolution)
                if step % self.config.log_every == 0 or self.state["step_in_stage"] == stage.steps:
                    self._log_step(record)
                end_of_stage = self.state["step_in_stage"] == stage.steps
                stop, sample_now, save_now = self._requests()
                if end_of_stage or sample_now or (stage.sample_every and
                                                  self.state["step_in_stage"] % stage.sample_every == 0):
                    self._samples(stage_index, stage, manifest)
                if stop or save_now or end_of_stage or (stage.checkpoint_every and
                                                        self.state["step_in_stage"] % stage.checkpoint_every == 0):
                    self._checkpoint(stage, manifest)  # with its validation loss
                elif self.config.validate_every and step % self.config.validate_every == 0:
                    self._validate(stage, manifest)
                if stop:
                    self._event(Stopped(step, "stop requested: saved a checkpoint and exited"))
                    return "stopped"
            self.state["step_in_stage"] = 0
        self._event(Finished(self.state["global_step"]))
        return "finished"

    def _step(self, stage, stage_index: int, data: StageData, accumulation: int):
        acc = self.accelerator
        step = self.state["step_in_stage"]
        lr = stage_lr(stage, step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.one_by_one is not None:  # the stochastic rounding of this step, repeatable after a resume
            self.one_by_one.set_seed(self.config.seed * 1_000_003 + self.state["global_step"])
        self.fused_norms.clear()
        total_loss = torch.zeros((), device=acc.device)
        samples = 0
        for micro in range(accumulation):
            position = (step * accumulation + micro) * self.world + self.rank
            generator = _generator(self.config.seed, stage_index, step, micro, self.rank, 7)
            latents, features, mask = data.load(position, generator, stage.caption_dropout)
            latents = latents.to(acc.device)
            x_t, t, target = noisy_inputs(latents, generator)
            sync = micro == accumulation - 1
            with contextlib.nullcontext() if sync else acc.no_sync(self.model):
                prediction = self.model(x_t.to(self.weight_dtype), t, features.to(acc.device, self.weight_dtype),
                                        mask.to(acc.device))
                loss = flow_matching_loss(prediction.float(), target, self.config.pooled_loss_weight)
                acc.backward(loss / accumulation)
            total_loss += loss.detach() / accumulation
            samples += latents.shape[0]
        if self.config.memory.fused_backward:  # each weight was stepped, its gradient clipped and freed already
            grad_norm = math.sqrt(sum(self.fused_norms))
        else:
            grad_norm = acc.clip_grad_norm_(self.model.parameters(), self.config.optimizer.grad_clip)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self._inner)
        mean_loss = acc.reduce(total_loss, reduction="mean").item()
        all_samples = int(acc.reduce(torch.tensor(samples, device=acc.device), reduction="sum").item())
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"the loss became {mean_loss} at step {self.state['global_step'] + 1}: "
                                     "lower the learning rate or check the data.")
        return mean_loss, float(grad_norm), lr, all_samples

    def _requests(self) -> tuple[bool, bool, bool]:
        """Stop, sample now, save now: asked for by a signal or the run folder's flag files. The main process
        reads (and clears) the sample and save flags; one reduction tells every process."""
        main = self.accelerator.is_main_process
        local = [self.stop_signal.received or self.run.stop_requested(),
                 main and self.run.take_flag(self.run.sample_flag), main and self.run.take_flag(self.run.save_flag)]
        if self.world == 1:
            return tuple(bool(v) for v in local)
        flags = torch.tensor([1.0 if v else 0.0 for v in local], device=self.accelerator.device)
        return tuple(bool(v > 0) for v in self.accelerator.reduce(flags, reduction="max").tolist())

    # ---- records ---------------------------------------------------------------------------

    def _event(self, event: TrainingEvent) -> None:
        if self.accelerator.is_main_process:
            self.run.log(event)

    def _log_step(self, record: Step) -> None:
        if not self.accelerator.is_main_process:
            return
        self.run.log(record)
        self.accelerator.log({"loss": record.loss, "lr": record.lr, "grad_norm": record.grad_norm,
                              "samples_per_s": record.samples_per_s}, step=record.step)
        self.run.set_status("running", step=record.step, total_steps=self.config.total_steps,
                            stage=record.stage, loss=record.loss, eta_s=record.eta_s, pid=os.getpid())

    def _stage_start(self, index: int, stage, accumulation: int, manifest: dict) -> None:
        self._event(StageStart(stage.name, index, self.state["global_step"], stage.resolution, stage.batch_size,
                               stage.micro_batch_size, accumulation, self.world, len(manifest["items"]), stage.lr,
                               self.state["step_in_stage"]))

    # ---- samples and checkpoints -------------------------------------------------------------

    def _weights(self) -> dict[str, torch.Tensor]:
        """The weights a person would use: the EMA when there is one (collective under FSDP)."""
        if self.ema is not None:
            return self.ema.full_state()
        return {name: full_tensor(p.detach()).float().cpu() for name, p in self._inner.named_parameters()}

    def _samples(self, stage_index: int, stage, manifest: dict) -> None:
        if not self.config.samples.prompts:
            return
        weights = self._weights()
        if self.accelerator.is_main_process:
            prompts = [(text, self.cache.load_text(path))
                       for text, path in zip(self.config.samples.prompts, manifest["samples"])]
            paths = self.samples.make(weights, self.model_config, prompts, self.cache.load_text(manifest["empty"]),
                                      (stage.resolution, stage.resolution), self.run.samples, self.state["global_step"])
            self._event(Samples(self.state["global_step"], stage.name,
                                [str(p.relative_to(self.run.path)) for p in paths]))
        self.accelerator.wait_for_everyone()

    def _validate(self, stage, manifest: dict, weights: dict[str, torch.Tensor] | None = None) -> dict | None:
        """The validation loss of the weights a checkpoint saves (the EMA when there is one; with several
        processes, the training weights), logged as a "validation" event; None without validation images."""
        entries = manifest.get("validation", [])
        if not entries:
            return None
        tick = time.perf_counter()
        swap = self.ema is not None and self.world == 1
        if swap and weights is None:
            weights = self._weights()
        with weights_in(self._inner, weights) if swap else contextlib.nullcontext():
            loss = validation_loss(self.model, self.cache, entries, self.config.seed, stage.micro_batch_size,
                                   self.accelerator.device, self.weight_dtype, self.config.pooled_loss_weight)
        result = {"validation_loss": loss, "validation_resolution": stage.resolution}
        step = self.state["global_step"]
        self._event(Validation(step, stage.name, loss, stage.resolution, len(entries),
                               round(time.perf_counter() - tick, 3),
                               "ema" if swap else "training" if self.ema is not None else "model"))
        if self.accelerator.is_main_process:
            self.accelerator.log({f"validation_loss/{stage.resolution}px": loss}, step=step)
        return result

    def _checkpoint(self, stage, manifest: dict) -> None:
        """Save one checkpoint; on failure its partial folder is removed and a full disk says what it needs."""
        partial = checkpointing.partial_path(self.run, self.state["global_step"])
        try:
            self._save_checkpoint(partial, stage, manifest)
        except Exception as exc:
            if self.accelerator.is_main_process:
                shutil.rmtree(partial, ignore_errors=True)
            if checkpointing.is_disk_full(exc):
                needed = checkpointing.save_size(self.run, sum(p.numel() for p in self._inner.parameters()),
                                                 self.ema is not None)
                raise checkpointing.disk_full_error(self.run, needed) from exc
            raise

    def _save_checkpoint(self, partial: Path, stage, manifest: dict) -> None:
        acc = self.accelerator
        step = self.state["global_step"]
        if acc.is_main_process:
            checkpointing.begin(self.run, step)
        acc.wait_for_everyone()
        acc.save_state(str(partial / "state"))
        if self.ema is not None:
            self.ema.save(partial / "state", self.rank)
        in_sync = self._replicas_in_sync()
        weights = self._weights()
        if acc.is_main_process:
            checkpointing.write_model_folder(partial / "model", weights, self.model_config, self.components)
        validation = self._validate(stage, manifest, weights) or {}  # uses the weights up
        if acc.is_main_process:
            state = {**self.state, "optimizer_state": self.config.optimizer_state_kind, "stage_name": stage.name,
                     **validation}
            final = checkpointing.commit(self.run, partial, step, state, self.config.keep_checkpoints,
                                         self.config.keep_best)
            self._event(Checkpoint(step, str(final.relative_to(self.run.path)), in_sync))
        acc.wait_for_everyone()

    def _replicas_in_sync(self) -> bool | None:
        """With replicated weights (DDP), every process must hold identical ones; None when sharded."""
        if self.world == 1 or (self.ema is not None and self.ema.sharded):
            return None
        digest = hashlib.sha256()
        for _, p in sorted(self._inner.named_parameters()):
            digest.update(p.detach().cpu().numpy().tobytes())
        local = torch.tensor(list(digest.digest()[:8]), dtype=torch.float64, device=self.accelerator.device)
        gathered = self.accelerator.gather(local[None]).cpu()
        in_sync = bool((gathered == gathered[0]).all())
        if not in_sync:
            raise RuntimeError("the processes' model replicas differ; the run stopped to avoid saving a wrong model.")
        return in_sync

    def _resume(self) -> None:
        """Continue from the newest complete checkpoint that can be read; a damaged one (its trainer state,
        model or optimizer files) is passed over for the one before it, and the events say so."""
        damaged = []
        for checkpoint in reversed(self.run.complete_checkpoints()):
            try:
                self.state = checkpointing.read_trainer_state(checkpoint, len(self.config.stages))
                self.accelerator.load_state(str(checkpoint / "state"))
                if self.ema is not None:
                    self.ema.load(checkpoint / "state", self.rank)
                break
            except Exception as exc:  # any reader's error: the checkpoint is unusable, an older one may not be
                damaged.append(f"{checkpoint.name} ({unreadable_reason(exc)})")
                self._event(CheckpointDamaged(checkpoint.name, f"{checkpoint.name} cannot be read "
                                                               f"({unreadable_reason(exc)}); trying the checkpoint "
                                                               "before it"))
        else:
            raise checkpointing.CheckpointUnreadable(
                "no checkpoint of this run can be read" + (f": {'; '.join(damaged)}" if damaged else "")
                + ". Start the run again from its config.")
        stage = self.config.stages[self.state["stage"]]
        if self.state["step_in_stage"] >= stage.steps and self.state["stage"] + 1 < len(self.config.stages):
            self.state["stage"] += 1
            self.state["step_in_stage"] = 0
        self._event(Resumed(self.state["global_step"], checkpoint.name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.loop")
    parser.add_argument("run_dir")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    run = RunFolder(args.run_dir)
    trainer = None
    try:
        trainer = Trainer(run, args.resume)
        outcome = trainer.train()
        if trainer.accelerator.is_main_process:
            run.set_status(outcome, step=trainer.state["global_step"], total_steps=trainer.config.total_steps)
        trainer.accelerator.end_training()
        return 0
    except Exception as exc:  # one line in the run folder for the app, the traceback on stderr for the log
        traceback.print_exc()
        is_main = trainer is None or trainer.accelerator.is_main_process
        if is_main:
            message = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, (checkpointing.CheckpointSpaceError, checkpointing.CheckpointUnreadable)):
                message = str(exc)
            elif isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                message = (f"the disk is full ({exc.filename or run.path}); the last complete checkpoint is "
                           "intact: free some space (or lower keep_checkpoints) and continue with --resume.")
            run.log(Failed(message))
            run.set_status("failed", message=message)
        return 1


if __name__ == "__main__":
    sys.exit(main())
