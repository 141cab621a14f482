"""A training run's events: what the trainer writes to events.jsonl and what the Train tab and the launcher
read back, one definition for both sides. No torch.

Each event is one JSON line: {"event": its kind, "time": ..., its fields}. `record()` writes one; `parse()`
reads one back as its class (None for a kind this version does not know: a newer trainer's). Every field has a
default, so a line from an older trainer, or one whose damaged fields RunFolder left out, still reads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from core.checked import flag, integer, list_of, number, optional, text


@dataclass(frozen=True)
class Step:
    step: int = 0
    stage: str = ""
    stage_index: int = 0
    stage_step: int = 0
    loss: float = float("nan")
    lr: float = float("nan")
    grad_norm: float = float("nan")
    samples_per_s: float = 0.0
    eta_s: float = 0.0
    resolution: int = 0


@dataclass(frozen=True)
class StageStart:
    stage: str = ""
    stage_index: int = 0
    step: int = 0
    resolution: int = 0
    batch_size: int = 0
    micro_batch_size: int = 0
    accumulation: int = 1
    processes: int = 1
    items: int = 0
    lr: float = 0.0
    resumed_at: int = 0  # the step within the stage a resumed run starts from


@dataclass(frozen=True)
class Validation:
    step: int = 0
    stage: str = ""
    loss: float = float("nan")
    resolution: int = 0
    images: int = 0
    seconds: float = 0.0
    weights: str = ""  # "ema", "training" (several processes) or "model" (no EMA)


@dataclass(frozen=True)
class Samples:
    step: int = 0
    stage: str = ""
    files: list[str] = field(default_factory=list)  # relative to the run folder


@dataclass(frozen=True)
class Checkpoint:
    step: int = 0
    path: str = ""  # relative to the run folder
    replicas_in_sync: bool | None = None  # None: sharded weights (nothing to compare)


@dataclass(frozen=True)
class CheckpointDamaged:
    checkpoint: str = ""
    message: str = ""


@dataclass(frozen=True)
class Resumed:
    step: int = 0
    checkpoint: str = ""


@dataclass(frozen=True)
class Stopped:
    step: int = 0
    message: str = ""


@dataclass(frozen=True)
class Finished:
    step: int = 0


@dataclass(frozen=True)
class Failed:
    message: str = ""


KINDS = {"step": Step, "stage_start": StageStart, "validation": Validation, "samples": Samples,
         "checkpoint": Checkpoint, "checkpoint_damaged": CheckpointDamaged, "resumed": Resumed, "stopped": Stopped,
         "finished": Finished, "failed": Failed}
NAMES = {kind: name for name, kind in KINDS.items()}
# Every field of every kind, with the check it gets when a run folder is read back (RunFolder: a field that
# fails it is left out, and the class's default stands). One check per name, whichever kind has it.
FIELD_CHECKS = {"event": text(100), "time": number(0), "step": integer(0), "stage": text(200),
                "loss": number(finite=False), "lr": number(finite=False), "grad_norm": number(finite=False),
                "samples_per_s": number(0), "eta_s": number(0), "files": list_of(text(1000)), "path": text(),
                "checkpoint": text(), "message": text(5000), "resolution": integer(1), "batch_size": integer(1),
                "items": integer(0), "stage_index": integer(0), "stage_step": integer(0),
                "micro_batch_size": integer(1), "accumulation": integer(1), "processes": integer(1),
                "resumed_at": integer(0), "images": integer(0), "seconds": number(0), "weights": text(20),
                "replicas_in_sync": optional(flag())}
TrainingEvent = Step | StageStart | Validation | Samples | Checkpoint | CheckpointDamaged | Resumed | Stopped | \
    Finished | Failed


def record(event: TrainingEvent) -> dict:
    """The JSON object of an event, without its time (RunFolder.log adds it)."""
    return {"event": NAMES[type(event)], **asdict(event)}


def parse(line: dict) -> TrainingEvent | None:
    """An events.jsonl record (as RunFolder reads it: checked) as its class; None for an unknown kind."""
    kind = KINDS.get(line.get("event"))
    if kind is None:
        return None
    return kind(**{f.name: line[f.name] for f in fields(kind) if f.name in line and line[f.name] is not None})
