"""Start the training processes through `accelerate launch` and watch them.

One GPU: one process. Several GPUs: one process each, FSDP (version 2, full sharding of each
transformer block). CPU: one process, or several over gloo (DDP; accelerate's FSDP needs GPUs).
Several machines: accelerate's own --num_machines / --machine_rank / --main_process_ip options.

The processes run in their own session, so Ctrl+C in the terminal reaches only this launcher, which
asks the run to save and stop (the `stop` file) instead of killing it mid-write.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from core.network import free_port

from .run_folder import RunFolder, tail


@dataclass
class Topology:
    device: str  # "cuda" or "cpu"
    processes_per_machine: int
    machines: int = 1
    machine_rank: int = 0
    main_process_ip: str = ""
    main_process_port: int = 0

    @property
    def world(self) -> int:
        return self.processes_per_machine * self.machines


def accelerate_command(run: RunFolder, topology: Topology, mixed_precision: str, resume: bool) -> list[str]:
    command = [sys.executable, "-m", "accelerate.commands.launch",
               "--num_processes", str(topology.world), "--num_machines", str(topology.machines),
               "--mixed_precision", mixed_precision, "--dynamo_backend", "no"]
    if topology.machines > 1:
        command += ["--machine_rank", str(topology.machine_rank), "--main_process_ip", topology.main_process_ip,
                    "--main_process_port", str(topology.main_process_port)]
    elif topology.world > 1:
        command += ["--main_process_port", str(topology.main_process_port or free_port())]
    if topology.device == "cpu":
        # torchrun-style start for several CPU processes; each one asks accelerate for the CPU (gloo).
        command += ["--multi_gpu"] if topology.world > 1 else ["--cpu"]
    elif topology.world > 1:
        command += ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
                    "--fsdp_transformer_layer_cls_to_wrap", "Block", "--fsdp_state_dict_type", "SHARDED_STATE_DICT",
                    "--fsdp_reshard_after_forward", "true"]
    command += ["-m", "trainer.loop", str(run.path)]
    return command + (["--resume"] if resume else [])


def run_processes(run: RunFolder, command: list[str], on_event=None) -> int:
    """Run the training processes to the end; their output goes to train.log. Returns the exit code.

    on_event(record) sees each new events.jsonl record (the CLI draws its progress bar from them).
    The first Ctrl+C / SIGTERM asks the run to save and stop; a second one ends the processes.
    """
    log_path = run.path / "train.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                      env.get("PYTHONPATH")]))
    seen = len(run.read_events())
    with log_path.open("a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        run.note_processes(process.pid)  # its own session: the group id is its pid
        interrupts = 0

        def on_signal(signum, frame):
            nonlocal interrupts
            interrupts += 1
            if interrupts == 1:
                run.request_stop()
                print("\nstopping: the run saves a checkpoint and exits (press Ctrl+C again to end it now)",
                      file=sys.stderr)
            elif hasattr(os, "killpg"):
                os.killpg(process.pid, signal.SIGKILL)  # the whole group: accelerate and its workers
            else:
                process.kill()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while process.poll() is None:
                time.sleep(0.2)
                seen = _pass_events(run, seen, on_event)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        _pass_events(run, seen, on_event)
    code = process.returncode
    if code != 0 and run.status().get("state") not in ("failed", "stopped", "finished"):
        run.set_status("failed", message=f"the training process exited with code {code}; see train.log")
    return code


def _pass_events(run: RunFolder, seen: int, on_event) -> int:
    events = run.read_events()
    if on_event is not None:
        for record in events[seen:]:
            on_event(record)
    return len(events)


def log_tail(run: RunFolder, lines: int = 25) -> str:
    return tail(run.log_file, lines)
