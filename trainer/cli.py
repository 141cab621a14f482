"""`lumina-studio train`: check a config, prepare the run folder and features, launch, watch.

    lumina-studio train CONFIG.toml [--gpus N | --gpu-ids 0,2] [--check] [--run-dir DIR]
    lumina-studio train --resume RUN_DIR
    lumina-studio train --stop RUN_DIR | --sample-now RUN_DIR | --save-now RUN_DIR
    lumina-studio train --presets
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

from core.cli import OneLineParser, report_errors
from core.generation.prompts import MAX_TOKENS
from core.storage import human_size

from .config import ConfigError, RunConfig, load_config
from .launch import Topology, accelerate_command, log_tail, run_processes
from .run_folder import ACTIVE_STATES, RunFolder

PROG = "lumina-studio train"
PRESETS = Path(__file__).resolve().parents[1] / "resources" / "presets" / "train"


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="Progressive multi-stage full fine-tuning of Lumina-Image 2.0.")
    parser.add_argument("config", nargs="?", help="a run config (TOML); see --presets")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest complete checkpoint")
    parser.add_argument("--stop", metavar="RUN_DIR", help="ask a running run to save a checkpoint and exit")
    parser.add_argument("--sample-now", metavar="RUN_DIR", help="ask a running run for sample images at its next step")
    parser.add_argument("--save-now", metavar="RUN_DIR", help="ask a running run for a checkpoint at its next step")
    parser.add_argument("--presets", action="store_true", help="list the preset configs that ship with Lumina Studio")
    parser.add_argument("--check", action="store_true",
                        help="check the config and datasets and print the memory estimate; train nothing")
    parser.add_argument("--gpu-memory", type=float, metavar="GB",
                        help="with --check: estimate for one GPU with this much memory (GiB, as nvidia-smi counts) "
                             "and list the memory modes that fit it, e.g. to plan for a card this machine lacks")
    parser.add_argument("--gpus", type=int, help="GPUs to use on this machine (default: all it has)")
    parser.add_argument("--gpu-ids", help="which GPUs, as nvidia-smi numbers them, e.g. 0,2 (default: all)")
    parser.add_argument("--cpu-processes", type=int, default=1,
                        help="processes when training on the CPU (several talk over gloo; for tiny models and tests)")
    parser.add_argument("--run-dir", help="the run folder (default: OUTPUT/NAME-DATE-TIME)")
    group = parser.add_argument_group("several machines (passed to accelerate launch)")
    group.add_argument("--num-machines", type=int, default=1)
    group.add_argument("--machine-rank", type=int, default=0)
    group.add_argument("--main-process-ip", default="")
    group.add_argument("--main-process-port", type=int, default=29500)
    return parser


# ---- deciding where and how to run ---------------------------------------------------------------


def choose_topology(config: RunConfig, args) -> Topology:
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = config.device if config.device != "auto" else ("cuda" if available else "cpu")
    if device == "cuda" and not available:
        raise ConfigError("device: cuda was asked for but PyTorch sees no CUDA GPU; use device = \"cpu\" or "
                          "install a CUDA build of PyTorch.")
    if device == "cuda":
        gpus = args.gpus or available
        if not 1 <= gpus <= available:
            raise ConfigError(f"--gpus {gpus}: this machine has {available} GPU(s).")
        per_machine = gpus
    else:
        if args.gpus:
            raise ConfigError(f"--gpus {args.gpus}: PyTorch sees no CUDA GPU here (use --cpu-processes to train "
                              "tiny models on the CPU).")
        if args.cpu_processes < 1:
            raise ConfigError("--cpu-processes must be at least 1.")
        per_machine = args.cpu_processes
    if args.num_machines > 1 and not args.main_process_ip:
        raise ConfigError("--num-machines above 1 needs --main-process-ip (the address of machine rank 0).")
    return Topology(device, per_machine, args.num_machines, args.machine_rank, args.main_process_ip,
                    args.main_process_port if args.num_machines > 1 else 0)


def mixed_precision(config: RunConfig, device: str) -> str:
    if config.precision == "auto":
        if device != "cuda":
            return "no"
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if config.precision == "bf16" else "no"


def accumulation_steps(config: RunConfig, world: int) -> list[int]:
    steps, problems = [], []
    for i, stage in enumerate(config.stages):
        per_step = stage.micro_batch_size * world
        if stage.batch_size % per_step:
            problems.append(f"stages[{i}].batch_size: {stage.batch_size} is not a multiple of micro_batch_size "
                            f"{stage.micro_batch_size} x {world} process(es) = {per_step}; use "
                            f"{max(per_step, stage.batch_size // per_step * per_step)} or change micro_batch_size.")
        steps.append(max(1, stage.batch_size // per_step))
        if config.memory.fused_backward and steps[-1] > 1:
            problems.append(f"stages[{i}]: memory.fused_backward steps each weight during the backward pass, so it "
                            f"cannot accumulate gradients over micro-batches: set micro_batch_size = batch_size "
                            f"({stage.batch_size // world} per process).")
    if world > 1 and config.steps_one_by_one:
        problems.append("memory.weights = bf16, memory.fused_backward and optimizer.name = adamw8bit or adafactor "
                        "work with one process (one GPU, or the CPU) for now; use one GPU, or the default memory "
                        "settings.")
    if problems:
        raise ConfigError("\n".join(problems))
    return steps


# ---- the commands ---------------------------------------------------------------------------------


def new_run(args) -> int:
    from core.storage import runs_dir

    config = load_config(args.config)
    if args.check:
        return check_and_train(args, config, None)
    run_path = Path(args.run_dir).expanduser() if args.run_dir else \
        Path(config.output or runs_dir()) / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = RunFolder(run_path)
    if run.latest_checkpoint() is not None:
        raise ConfigError(f"{run_path} already holds a trained run: continue it with --resume {run_path}, "
                          "or pick another --run-dir.")
    created = not run.path.exists()
    run.path.mkdir(parents=True, exist_ok=True)
    if run.alive():
        raise ConfigError(f"{run_path} is being trained right now (process {run.launcher()['pid']}).")
    try:
        with run.launched():  # from here on a reader can tell this run is alive, while it checks and trains
            return check_and_train(args, config, run)
    except Exception:
        if created and not run.config.exists():  # it failed its checks: a folder made for it only goes again
            shutil.rmtree(run.path, ignore_errors=True)
        raise


def check_and_train(args, config: RunConfig, run: RunFolder | None) -> int:
    """Check the datasets and memory; with a run folder, prepare the features and train."""
    import torch

    from core.models import loader
    from core.models.registry import find_model
    from core.storage import write_json_atomic

    from .datasets import check_datasets
    from .memory import (check_fit, check_ram, describe_fits, gpu_memory, lighter_settings, mode_fits, mode_label,
                         optimizer_bytes, parameter_count, ram_size, stage_estimates)

    source = find_model(config.base_model, config.components or None)
    planned = int(args.gpu_memory * 2**30) if args.gpu_memory else None
    if planned:  # a plan for one GPU of that size, wherever this runs
        topology = Topology("cuda", 1, 1, 0, "", 0)
        precision = "no" if config.precision == "no" else "bf16"
    else:
        topology = choose_topology(config, args)
        precision = mixed_precision(config, topology.device)
    accumulation = accumulation_steps(config, topology.world)

    data = check_datasets(config)
    if data.empty_stages:
        raise ConfigError("\n".join(data.empty_stages))
    report = sys.stdout if run is None else sys.stderr  # --check's report can be saved with >; a run logs it
    print(data.text(), file=report)

    model_config = loader.dit_config(source)
    if config.memory.blocks_to_swap >= model_config.num_layers:
        raise ConfigError(f"memory.blocks_to_swap: {config.memory.blocks_to_swap} is not below the model's "
                          f"{model_config.num_layers} joint blocks; swap at most {model_config.num_layers - 1}.")
    params = parameter_count(model_config)
    estimates = stage_estimates(model_config, params, config, topology.world, topology.device, precision,
                                optimizer_bytes(model_config, config.optimizer.name))
    print(f"model: {params / 1e6:.1f}M parameters; {topology.world} {topology.device} process(es), "
          f"mixed precision {precision}", file=report)
    print(f"memory mode: {mode_label(config)}", file=report)
    for estimate in estimates:
        print("memory: " + estimate.describe(), file=report)
    if topology.device == "cuda":
        gpus = [planned] if planned else gpu_memory()[:topology.processes_per_machine]
        warnings = check_fit(estimates, gpus)
        if topology.world == 1:  # one GPU: every memory mode against it, and the one that would fit
            exact = functools.partial(optimizer_bytes, model_config)
            print(f"memory modes for one GPU of {human_size(gpus[0])} (estimated, the largest stage):", file=report)
            for line in describe_fits(mode_fits(model_config, params, config, gpus[0], exact), config, gpus[0]):
                print(f"  {line}", file=report)
            if warnings:
                warnings.append(lighter_settings(model_config, params, config, gpus[0], exact))
    else:
        warnings = check_ram(estimates, topology.processes_per_machine, ram_size())
    for warning in warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    if run is None:
        print("The config and datasets are fine; nothing was trained (--check).", file=report)
        return 0
    run.events.unlink(missing_ok=True)  # a start without a checkpoint begins again (features are reused)
    config.write(run.config)
    plan = {
        "base_model": str(source.dit if source.is_single_file else source.components),
        "components": str(source.components) if source.is_single_file else "",
        "device": topology.device,
        "processes": topology.world,
        "gpu_ids": args.gpu_ids or "",  # a resume uses the same GPUs unless told otherwise
        "mixed_precision": precision,
        "accumulation": accumulation,
        "parameters": params,
        "memory_estimates": [asdict(e) for e in estimates],
    }
    write_json_atomic(run.plan, plan)
    write_json_atomic(run.dataset_report, {"datasets": [asdict(r) for r in data.reports], "buckets": data.histograms,
                                           "small_buckets": data.small_buckets})
    print(f"run folder: {run.path}", file=sys.stderr)

    run.set_status("preparing", message="encoding latents and captions")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    job = (run.path, config, source, data.items, topology.device, dtype, data.validation)
    if topology.device == "cuda":
        # In a child process: the VAE, Gemma and the CUDA context are gone before training starts.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            failed, truncated = pool.submit(prepare_features, *job).result()
    else:
        failed, truncated = prepare_features(*job)
    for line in failed:
        print(f"{PROG}: warning: skipped (unreadable while encoding): {line}", file=sys.stderr)
    if truncated:
        print(f"{PROG}: warning: {truncated} caption(s) are longer than {MAX_TOKENS} tokens with the system "
              "prompt; their ends are cut, as at generation time.", file=sys.stderr)
    return launch(run, topology, precision, config, resume=False)

def prepare_features(run_path, config, source, items, device: str, dtype, validation) -> tuple[list[str], int]:
    import torch

    from core.cpu_budget import CpuWork

    from .features import FeatureCache

    with CpuWork("feature preparation", device):
        return FeatureCache(run_path).prepare(config, source, items, torch.device(device), dtype, validation)


def resume_run(args) -> int:
    run = RunFolder(Path(args.resume).expanduser())
    if not run.config.is_file() or not run.plan.is_file():
        raise ConfigError(f"{run.path} is not a training run folder (no config.toml / plan.json).")
    if run.latest_checkpoint() is None:
        raise ConfigError(f"{run.path} has no complete checkpoint yet; start the run again with its config.")
    if run.state() == "finished":
        raise ConfigError(f"{run.path} is finished: every step of it is trained. {finished_note(run)} To train "
                          "more, start a new run from its config.toml (Clone in the Train tab).")
    config = load_config(run.config)
    from .checkpointing import saved_optimizer_state

    saved = saved_optimizer_state(run.latest_checkpoint())
    if saved != config.optimizer_state_kind:
        raise ConfigError(f"{run.path}'s checkpoints hold the optimizer state of {saved}, and its config.toml now "
                          f"asks for {config.optimizer_state_kind}: that state cannot carry over. Put "
                          "[optimizer] name and [memory] back as they were, or start a new run with the newest "
                          "checkpoint's folder as its base_model (the optimizer starts afresh).")
    plan = run.read_plan()
    missing = [name for name in ("processes", "mixed_precision", "device") if name not in plan]
    if missing:
        raise ConfigError(f"{run.plan} is damaged (no usable {', '.join(missing)}): the run cannot be resumed; "
                          "start it again from its config.toml.")
    if plan.get("gpu_ids") and not (args.gpus or args.gpu_ids):
        args.gpu_ids = plan["gpu_ids"]
        choose_gpus(args)
    topology = choose_topology(config, args)
    if topology.world != plan["processes"]:
        raise ConfigError(f"this run was started with {plan['processes']} process(es); resume it with the same "
                          f"number (now {topology.world}) so the data order and sharded state match.")
    if run.alive():
        raise ConfigError(f"{run.path} is being trained right now (process {run.launcher()['pid']}).")
    run.stop_flag.unlink(missing_ok=True)
    print(f"resuming {run.path} from {run.latest_checkpoint().name}", file=sys.stderr)
    with run.launched():
        return launch(run, topology, plan["mixed_precision"], config, resume=True)


def finished_note(run: RunFolder) -> str:
    return f"Its model: {run.latest_checkpoint() / 'model'}."


def launch(run: RunFolder, topology: Topology, precision: str, config: RunConfig, resume: bool) -> int:
    from tqdm import tqdm

    from . import events
    from .events import Checkpoint, Resumed, Samples, StageStart, Step, Validation

    command = accelerate_command(run, topology, precision, resume)
    bar = tqdm(total=config.total_steps, unit="step", file=sys.stderr, desc="training")

    def on_event(record):
        event = events.parse(record)
        if isinstance(event, Step):
            bar.n = event.step
            bar.set_postfix_str(f"{event.stage} loss {event.loss:.4f}")
            bar.refresh()
        elif isinstance(event, Resumed):
            bar.n = event.step
            bar.refresh()
        elif isinstance(event, (StageStart, Checkpoint, Samples)):
            detail = event.path if isinstance(event, Checkpoint) else event.stage
            bar.write(f"{events.NAMES[type(event)].replace('_', ' ')} at step {event.step}: {detail}",
                      file=sys.stderr)
        elif isinstance(event, Validation):
            bar.write(f"validation loss {event.loss:.5f} at step {event.step} ({event.images} images, "
                      f"{event.resolution} px)", file=sys.stderr)

    code = run_processes(run, command, on_event)
    bar.close()
    status = run.status()
    if code == 0:
        checkpoint = run.latest_checkpoint()
        print(f"{status.get('state', 'finished')}; newest checkpoint: {checkpoint / 'model' if checkpoint else 'none'}",
              file=sys.stderr)
        return 0
    print(f"{PROG}: error: training failed: {status.get('message', f'exit code {code}')}\n"
          f"--- last lines of {run.path / 'train.log'} ---\n{log_tail(run)}", file=sys.stderr)
    return 1


def list_presets() -> int:
    """Each preset with its whole opening comment (every line up to the first setting)."""
    for preset in sorted(PRESETS.glob("*.toml")):
        lines = preset.read_text(encoding="utf-8").splitlines()
        comment = list(itertools.takewhile(lambda line: line.startswith("#"), lines))
        print(preset)
        for line in comment:
            print(f"    {line[1:].strip()}")
    return 0


def choose_gpus(args) -> None:
    """--gpu-ids: only those GPUs are seen by this process and the training processes it starts."""
    from core.gpus import parse_gpu_ids, use_only

    ids = parse_gpu_ids(args.gpu_ids)
    if args.gpus and args.gpus != len(ids):
        raise ConfigError(f"--gpus {args.gpus} and --gpu-ids {args.gpu_ids} disagree: give one of them.")
    args.gpus = len(ids)
    use_only(ids)


def run_command(args) -> int:
    if args.presets:
        return list_presets()
    if args.gpu_memory is not None and (not args.check or args.gpu_memory <= 0):
        raise ConfigError("--gpu-memory GB plans for a GPU: give it with --check and a size above 0 (e.g. 12).")
    if args.gpu_ids:
        choose_gpus(args)
    for folder, flag, what in ((args.stop, "stop_flag", "save a checkpoint and stop"),
                               (args.sample_now, "sample_flag", "make samples at its next step"),
                               (args.save_now, "save_flag", "save a checkpoint at its next step")):
        if folder:
            run = RunFolder(Path(folder).expanduser())
            if not run.config.is_file():
                raise ConfigError(f"{run.path} is not a training run folder.")
            state = run.state()
            if state not in ACTIVE_STATES:
                raise ConfigError(f"{run.path} is {state}, not running: there is nothing to ask it."
                                  + (" " + finished_note(run) if state == "finished" else ""))
            getattr(run, flag).touch()
            print(f"asked {run.path} to {what}", file=sys.stderr)
            return 0
    if args.resume:
        return resume_run(args)
    if not args.config:
        raise ConfigError("give a config file (see --presets), or --resume RUN_DIR.")
    return new_run(args)


def main(argv: list[str] | None = None) -> int:
    return report_errors(PROG, run_command, build_parser().parse_args(argv))

if __name__ == "__main__":
    sys.exit(main())
