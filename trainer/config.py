"""The training run config: a versioned TOML file, checked in full before anything starts.

Every problem is reported at once, each naming the field and the fix. `resolve` fills in every default
so the copy saved in the run folder says exactly what ran.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import tomli_w

from core.errors import LuminaError
from core.generation.prompts import SYSTEM_PROMPTS
from core.generation.request import check_field

CONFIG_VERSION = 1
DATASET_FORMATS = ("auto", "folder", "imagefolder", "jsonl")
PRECISIONS = ("auto", "bf16", "fp32")
DEVICES = ("auto", "cpu", "cuda")
LR_SCHEDULES = ("constant", "linear", "cosine")
RESOLUTION_STEP = 16  # a latent patch is 16x16 pixels


class ConfigError(LuminaError):
    """One or more problems in a run config; the message lists each with its fix."""


# Which images of a reviewed folder train: every one, all but those marked rejected, or only approved ones.
REVIEW_FILTERS = {"all": "every image", "not_rejected": "all but the rejected", "approved": "approved only"}

@dataclass
class DatasetConfig:
    path: str
    name: str = ""
    format: str = "auto"  # folder (.txt sidecars) | imagefolder (metadata.jsonl) | jsonl (authors') | auto
    system_prompt: str = "auto"  # auto: the authors' choice for the format (base / align), else "real"
    repeats: int = 1  # how many times each item counts per epoch (weights a small set up)
    min_side: int = 64  # images whose shorter side is below this are skipped as too small
    review: str = "not_rejected"  # the Caption tab's review marks: all | not_rejected | approved (only)


@dataclass
class StageConfig:
    name: str
    resolution: int  # bucket area = resolution^2
    steps: int  # optimizer steps in this stage
    batch_size: int  # global batch: samples per optimizer step over all processes
    micro_batch_size: int  # samples per forward pass on one process
    lr: float = 2e-4
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # after the warm-up: constant, or linear / cosine decay to 0 at the stage's end
    caption_dropout: float = 0.1  # share of captions replaced by "" (so CFG has an unconditional model)
    system_prompt: str = "dataset"  # "dataset": each dataset's own; else a name or custom text
    datasets: list[str] = field(default_factory=list)  # names of the datasets to use; empty = all
    sample_every: int = 0  # steps between sample images (0 = only at the end of the stage)
    checkpoint_every: int = 0  # steps between checkpoints (0 = only at the end of the stage)


@dataclass
class OptimizerConfig:
    name: str = "adamw"  # adamw | adamw8bit (both moments in 8 bits) | adafactor (a row and a column per matrix)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-15
    weight_decay: float = 0.0
    grad_clip: float = 2.0


OPTIMIZERS = ("adamw", "adamw8bit", "adafactor")


@dataclass
class MemoryConfig:
    """How the weights, gradients and EMA are held (trainer/low_memory.py explains the techniques)."""
    weights: str = "fp32"  # fp32, or bf16: no fp32 copy of the model, updates rounded stochastically
    fused_backward: bool = False  # step each weight in the backward pass; gradients never all held at once
    ema_on_cpu: bool = False  # keep the EMA in the computer's memory, not the GPU's
    blocks_to_swap: int = 0  # the last N joint blocks live in the computer's memory (trainer/block_swap.py)


@dataclass
class SamplesConfig:
    """Sample images are drawn as Generate draws with this model: its own sampling defaults
    (sampling_defaults.json, else the authors'), unless a setting here says otherwise."""
    prompts: list[str] = field(default_factory=list)
    negative_prompt: str = ""
    steps: int | None = None
    guidance: float = 4.0
    cfg_trunc: float | None = None
    cfg_renorm: float | None = None
    solver: str | None = None
    seed: int = 0


@dataclass
class RunConfig:
    base_model: str
    datasets: list[DatasetConfig] = field(default_factory=list)
    stages: list[StageConfig] = field(default_factory=list)
    version: int = CONFIG_VERSION
    name: str = "run"
    output: str = ""  # the folder that holds runs (default: the data folder's runs/)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # bf16 mixed precision on GPUs, fp32 on the CPU
    activation_checkpointing: bool = True
    ema_decay: float = 0.95  # per optimizer step, as in the authors' fine-tuning script; 0 = no EMA
    pooled_loss_weight: float = 1.0  # the authors' extra loss on 4x average-pooled latents; 0 = off
    keep_checkpoints: int = 2  # older checkpoints are deleted (the newest few are kept)
    keep_best: bool = True  # and the one with the lowest validation loss is never deleted
    # The validation loss (trainer/validation.py): a share of each dataset's images held out of training (0 =
    # none; unset: 0.05 when the datasets hold at least 100 images), or a dataset used for it alone.
    validation: float | None = None
    validation_dataset: str = ""
    validate_every: int = 0  # steps between validation losses (0: at each checkpoint only)
    log_every: int = 1
    components: str = ""  # for a single-file base model: the diffusers folder with VAE and text encoder
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    samples: SamplesConfig = field(default_factory=SamplesConfig)

    @property
    def steps_one_by_one(self) -> bool:
        """Whether the optimizer steps one weight at a time (trainer/low_memory.OneByOne): every memory setting
        but the default fp32 weights with AdamW. One process only, for now."""
        return self.memory.weights == "bf16" or self.memory.fused_backward or self.optimizer.name != "adamw"

    @property
    def optimizer_state_kind(self) -> str:
        """What a checkpoint's optimizer state holds, for resuming: the optimizer, and whether it is one per
        weight (bf16 or fp32 weights, fused or not, the EMA anywhere: those change no saved state)."""
        return f"{self.optimizer.name}, {'one per weight' if self.steps_one_by_one else 'one for the model'}"

    def to_dict(self) -> dict:
        return asdict(self)

    def write(self, path: Path) -> None:
        from core.storage import write_text_atomic

        write_text_atomic(path, tomli_w.dumps(_without_empty(self.to_dict())))

    @property
    def total_steps(self) -> int:
        return sum(stage.steps for stage in self.stages)


def _without_empty(data):
    """TOML has no null; empty strings stay, None values are dropped."""
    if isinstance(data, dict):
        return {k: _without_empty(v) for k, v in data.items() if v is not None}
    if isinstance(data, list):
        return [_without_empty(v) for v in data]
    return data


# ---- reading and checking -------------------------------------------------------------------------


class _Problems:
    def __init__(self, source: str):
        self.source = source
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")

    def raise_if_any(self) -> None:
        if self.items:
            listing = "\n".join(f"  - {item}" for item in self.items)
            count = f"{len(self.items)} problem{'s' if len(self.items) > 1 else ''}"
            raise ConfigError(f"{self.source} has {count}:\n{listing}")


def _build(cls, data, where: str, problems: _Problems, required: tuple[str, ...] = ()):
    """A dataclass from a TOML table: unknown keys, missing keys and wrong types are problems."""
    if not isinstance(data, dict):
        problems.add(where, f"must be a table, not {type(data).__name__}.")
        return None
    known = {f.name: f for f in fields(cls)}
    values = {}
    for key, value in data.items():
        if key not in known:
            close = difflib.get_close_matches(key.replace("-", "_").lower(), known, n=1, cutoff=0.6)
            hint = f" Did you mean '{close[0]}'?" if close else f" Known keys: {', '.join(sorted(known))}."
            problems.add(f"{where}.{key}" if where else key, f"unknown setting.{hint}")
            continue
        values[key] = value
    for key in required:
        if key not in values:
            problems.add(f"{where}.{key}" if where else key, "is required but missing.")
    if any(key not in values for key in required):
        return None
    for key, value in list(values.items()):
        expected = known[key].type
        name = f"{where}.{key}" if where else key
        if not _type_ok(expected, value):
            problems.add(name, f"must be {_type_words(expected)}, not {value!r}.")
            del values[key]
    if any(key not in values for key in required):  # a required key of the wrong type: reported above
        return None
    return cls(**values)


def _type_ok(expected: str, value) -> bool:
    if expected.endswith(" | None"):  # TOML has no null: such a setting is simply left out
        return _type_ok(expected.removesuffix(" | None"), value)
    if expected == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == "float":  # nan and inf are never a usable setting (TOML allows them)
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if expected == "bool":
        return isinstance(value, bool)
    if expected == "str":
        return isinstance(value, str)
    if expected.startswith("list[str]"):
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if expected.startswith("list[float]"):
        return isinstance(value, list) and all(_type_ok("float", v) for v in value)
    return True  # nested tables are built (and checked) separately


def _type_words(expected: str) -> str:
    expected = expected.removesuffix(" | None")
    return {"int": "a whole number", "float": "a finite number", "bool": "true or false", "str": "text",
            "list[str]": "a list of texts", "list[float]": "a list of numbers"}.get(expected, expected)


def load_config(path: str | Path) -> RunConfig:
    """Read, check and resolve a run config file. Raises ConfigError listing every problem."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file. Start from a preset: lumina-studio train --presets")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a UTF-8 text file.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}).") from None
    return parse_config(data, str(path), base_dir=path.parent)


def parse_config(data: dict, source: str = "config", base_dir: Path | None = None) -> RunConfig:
    problems = _Problems(source)
    version = data.get("version")
    if version is None:
        problems.add("version", f"is required: add 'version = {CONFIG_VERSION}' at the top.")
    elif version != CONFIG_VERSION:
        problems.add("version", f"{version!r} is not supported; this Lumina Studio reads version {CONFIG_VERSION}.")
    data = dict(data)
    raw_datasets = data.pop("datasets", None)
    raw_stages = data.pop("stages", None)
    raw_optimizer = data.pop("optimizer", {})
    raw_memory = data.pop("memory", {})
    raw_samples = data.pop("samples", {})
    config = _build(RunConfig, data, "", problems, required=("base_model",))
    optimizer = _build(OptimizerConfig, raw_optimizer, "optimizer", problems) or OptimizerConfig()
    memory = _build(MemoryConfig, raw_memory, "memory", problems) or MemoryConfig()
    samples = _build(SamplesConfig, raw_samples, "samples", problems) or SamplesConfig()

    datasets = []
    if not raw_datasets:
        problems.add("datasets", 'at least one [[datasets]] table with a path is required, e.g. path = "my-images".')
    elif not isinstance(raw_datasets, list):
        problems.add("datasets", "must be written as [[datasets]] tables (a list), not a single [datasets] table.")
    else:
        for i, raw in enumerate(raw_datasets):
            built = _build(DatasetConfig, raw, f"datasets[{i}]", problems, required=("path",))
            if built is not None:
                datasets.append(built)
    stages = []
    if not raw_stages:
        problems.add("stages", "at least one [[stages]] table is required (name, resolution, steps, batch_size, "
                               "micro_batch_size).")
    elif not isinstance(raw_stages, list):
        problems.add("stages", "must be written as [[stages]] tables (a list), not a single [stages] table.")
    else:
        for i, raw in enumerate(raw_stages):
            built = _build(StageConfig, raw, f"stages[{i}]", problems,
                           required=("name", "resolution", "steps", "batch_size", "micro_batch_size"))
            if built is not None:
                stages.append(built)
    if config is None or not datasets or not stages:  # nothing to check the values of
        problems.raise_if_any()

    config.datasets, config.stages, config.optimizer, config.samples = datasets, stages, optimizer, samples
    config.memory = memory
    _check_values(config, problems)
    problems.raise_if_any()
    if base_dir is not None:
        _make_paths_absolute(config, base_dir)
    return config


def _check_values(config: RunConfig, problems: _Problems) -> None:
    if not config.base_model.strip():
        problems.add("base_model", "is empty: give a diffusers folder, a single-file DiT or a registered model name.")
    if not config.name.strip() or any(c in config.name for c in '/\\:*?"<>|'):
        problems.add("name", f"{config.name!r} cannot be a folder name: use letters, digits, '-' and '_'.")
    if config.device not in DEVICES:
        problems.add("device", f"{config.device!r} is not one of {', '.join(DEVICES)}.")
    if config.precision not in PRECISIONS:
        problems.add("precision", f"{config.precision!r} is not one of {', '.join(PRECISIONS)}.")
    if not 0 <= config.ema_decay < 1:
        problems.add("ema_decay", f"{config.ema_decay} must be at least 0 (off) and below 1 (e.g. 0.95 or 0.999).")
    if config.pooled_loss_weight < 0:
        problems.add("pooled_loss_weight", "must be 0 (off) or more.")
    if config.keep_checkpoints < 1:
        problems.add("keep_checkpoints", "must be at least 1 (the newest checkpoint is always kept).")
    if config.log_every < 1:
        problems.add("log_every", "must be at least 1.")
    if config.validation is not None and not 0 <= config.validation <= 0.5:
        problems.add("validation", f"{config.validation} must be a share from 0 (no validation loss) to 0.5, "
                                   "e.g. 0.05 for 5% of each dataset's images.")
    if config.validation_dataset and config.validation:
        problems.add("validation", "and validation_dataset are both set: hold out a share of the datasets or "
                                   "name a validation dataset, not both.")
    if config.validation_dataset and config.validation_dataset not in [d.name for d in config.datasets]:
        known = ", ".join(repr(d.name) for d in config.datasets if d.name) or "none are named"
        problems.add("validation_dataset", f"no dataset is named '{config.validation_dataset}' ({known}).")
    if config.validate_every < 0:
        problems.add("validate_every", "must be 0 (at each checkpoint only) or more.")

    opt = config.optimizer
    if len(opt.betas) != 2 or not all(0 <= b < 1 for b in opt.betas):
        problems.add("optimizer.betas", f"{opt.betas} must be two numbers in [0, 1), e.g. [0.9, 0.95].")
    if opt.eps <= 0:
        problems.add("optimizer.eps", "must be above 0 (the authors use 1e-15).")
    if opt.weight_decay < 0:
        problems.add("optimizer.weight_decay", "must be 0 or more.")
    if opt.grad_clip <= 0:
        problems.add("optimizer.grad_clip", "must be above 0 (the authors clip at 2.0).")
    if opt.name not in OPTIMIZERS:
        problems.add("optimizer.name", "must be adamw, adamw8bit (its moments in 8 bits: a quarter of the memory) "
                     "or adafactor (a factored second moment: far less memory).")
    if config.memory.weights not in ("fp32", "bf16"):
        problems.add("memory.weights", "must be fp32 or bf16 (no fp32 copy; updates rounded stochastically).")
    swap = config.memory.blocks_to_swap
    if swap < 0:
        problems.add("memory.blocks_to_swap", "must be 0 (off) or a number of joint blocks.")
    elif swap and not (config.memory.fused_backward and config.activation_checkpointing
                       and (config.memory.ema_on_cpu or config.ema_decay == 0)):
        problems.add("memory.blocks_to_swap", "needs [memory] fused_backward = true (a swapped block's weights are "
                                              "stepped on the CPU as their gradients arrive), ema_on_cpu = true "
                                              "and activation_checkpointing = true.")

    samples = config.samples
    for name in ("steps", "guidance", "cfg_trunc", "cfg_renorm", "solver"):  # Generate's own rules
        value = getattr(samples, name)
        if value is not None:
            try:
                check_field(name, value)
            except LuminaError as exc:
                problems.add(f"samples.{name}", str(exc))
    for i, prompt in enumerate(samples.prompts):
        if not prompt.strip():
            problems.add(f"samples.prompts[{i}]", "is empty: write a prompt or remove the entry.")

    names = [d.name for d in config.datasets if d.name]
    for i, dataset in enumerate(config.datasets):
        where = f"datasets[{i}]"
        if dataset.format not in DATASET_FORMATS:
            problems.add(f"{where}.format", f"{dataset.format!r} is not one of {', '.join(DATASET_FORMATS)}.")
        if dataset.repeats < 1:
            problems.add(f"{where}.repeats", "must be at least 1.")
        if dataset.review not in REVIEW_FILTERS:
            problems.add(f"{where}.review", f"must be one of {', '.join(REVIEW_FILTERS)} (the Caption tab's marks: "
                                            "all images, leave out rejected ones, or approved ones only).")
        if dataset.min_side < 16:
            problems.add(f"{where}.min_side", "must be at least 16 pixels (one latent patch).")
        _check_system_prompt(dataset.system_prompt, f"{where}.system_prompt", problems, allowed=("auto",))
        if dataset.name and [d.name for d in config.datasets].index(dataset.name) != i:
            problems.add(f"{where}.name", f"'{dataset.name}' is used by more than one dataset; names must differ.")

    stage_names = [s.name for s in config.stages]
    for i, stage in enumerate(config.stages):
        where = f"stages[{i}]"
        if stage_names.index(stage.name) != i:
            problems.add(f"{where}.name", f"'{stage.name}' is used by more than one stage; names must differ.")
        if stage.resolution < 2 * RESOLUTION_STEP or stage.resolution % RESOLUTION_STEP:
            problems.add(f"{where}.resolution", f"{stage.resolution} must be a multiple of {RESOLUTION_STEP} "
                                                f"and at least {2 * RESOLUTION_STEP} (e.g. 256, 512, 1024).")
        if stage.resolution > 2048:
            problems.add(f"{where}.resolution", f"{stage.resolution} is above 2048, beyond what the model's "
                                                "position tables were trained for.")
        previous = config.stages[i - 1].resolution if i else 0
        if _valid_resolution(previous) and _valid_resolution(stage.resolution) and stage.resolution < previous:
            problems.add(f"{where}.resolution", f"{stage.resolution} is below the stage before it ({previous}): "
                                                "progressive training goes up in resolution, or stays.")
        if stage.steps < 1:
            problems.add(f"{where}.steps", "must be at least 1.")
        if stage.micro_batch_size < 1:
            problems.add(f"{where}.micro_batch_size", "must be at least 1.")
        if stage.batch_size < 1:
            problems.add(f"{where}.batch_size", "must be at least 1.")
        elif stage.micro_batch_size >= 1 and stage.batch_size % stage.micro_batch_size:
            problems.add(f"{where}.batch_size", f"{stage.batch_size} is not a multiple of micro_batch_size "
                                                f"{stage.micro_batch_size}; the difference is made up by gradient "
                                                "accumulation, so pick a multiple.")
        if stage.lr <= 0 or stage.lr > 1:
            problems.add(f"{where}.lr", f"{stage.lr} must be above 0 and at most 1 (the authors use 2e-4).")
        if stage.warmup_steps < 0:
            problems.add(f"{where}.warmup_steps", "must be 0 or more.")
        elif stage.lr_schedule != "constant" and stage.warmup_steps >= stage.steps:
            problems.add(f"{where}.warmup_steps", f"{stage.warmup_steps} leaves no steps for the "
                                                  f"{stage.lr_schedule} decay; make it less than steps ({stage.steps}).")
        if stage.lr_schedule not in LR_SCHEDULES:
            problems.add(f"{where}.lr_schedule", f"'{stage.lr_schedule}' is not one of {', '.join(LR_SCHEDULES)}.")
        if not 0 <= stage.caption_dropout < 1:
            problems.add(f"{where}.caption_dropout", f"{stage.caption_dropout} must be in [0, 1) (authors: 0.1).")
        if stage.sample_every < 0 or stage.checkpoint_every < 0:
            problems.add(where, "sample_every and checkpoint_every must be 0 (end of stage only) or more.")
        _check_system_prompt(stage.system_prompt, f"{where}.system_prompt", problems, allowed=("dataset",))
        for wanted in stage.datasets:
            if wanted not in names:
                known = ", ".join(repr(n) for n in names) or "none are named"
                problems.add(f"{where}.datasets", f"no dataset is named '{wanted}' ({known}); give the dataset "
                                                  "a name = ... or fix the spelling.")


def _valid_resolution(value) -> bool:
    return isinstance(value, int) and 2 * RESOLUTION_STEP <= value <= 2048 and value % RESOLUTION_STEP == 0


def _check_system_prompt(value: str, where: str, problems: _Problems, allowed: tuple[str, ...]) -> None:
    # A custom system prompt is free text; a single word that is not a known name is most likely a typo.
    if value in allowed or value in SYSTEM_PROMPTS or " " in value.strip():
        return
    names = ", ".join([*allowed, *SYSTEM_PROMPTS])
    problems.add(where, f"'{value}' is not a system prompt name ({names}); custom text needs more than one word.")


def _make_paths_absolute(config: RunConfig, base_dir: Path) -> None:
    """Relative paths in a config are relative to the config file, not to where the command ran."""

    def absolute(value: str) -> str:
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else (base_dir / path).resolve())

    for dataset in config.datasets:
        dataset.path = absolute(dataset.path)
    if config.output:
        config.output = absolute(config.output)
    if config.components:
        config.components = absolute(config.components)
    candidate = base_dir / config.base_model
    if not Path(config.base_model).expanduser().is_absolute() and candidate.exists():
        config.base_model = str(candidate.resolve())  # else a registered model name, or "demo"
