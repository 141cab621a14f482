"""The Train tab's wizard: start → datasets → base model → stages → hardware → samples and checkpoints →
review, then save the config or launch it.

Each page checks its part of the config with the trainer's own rules (trainer.config.parse_config, no torch)
and blocks Next with the reason; the review page runs the trainer's own `--check` (datasets report, memory
estimate) before Launch is allowed, so the config launched is one `lumina-studio train --check` accepted.
"""

from __future__ import annotations

import html
import os
import re
import shlex
import shutil
import tomllib
from pathlib import Path

import tomli_w
from PySide6.QtCore import QProcess, Qt
from PySide6.QtWidgets import (
    QCheckBox, QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QListWidget, QPlainTextEdit,
    QPushButton, QRadioButton, QSpinBox, QTableWidget, QTableWidgetItem, QVBoxLayout, QWizard, QWizardPage,
)

from core.errors import LuminaError
from core.gpus import GPU, nvidia_gpus
from core.models.layouts import known_architecture
from core.models.registry import DEMO_NAME, available_models, find_model
from core.scenes.world import vocabulary_warning
from core.storage import first_free, human_size, runs_dir
from trainer.config import REVIEW_FILTERS, ConfigError, parse_config
from trainer.datasets import DatasetCheck, check_datasets
from trainer.memory import (MEMORY_MODES, MemoryMode, ModeFit, in_mode, mode_changes, mode_fits,
                            mode_label, ram_size)

from trainer.plan import disk_free, disk_needed, fresh_run_name, memory_estimates, model_facts

from .background import BackgroundTask
from .plain_text import plain_label
from .train_runs import RunFolder, can_resume, launch, resume, scan_runs, train_command

PRESETS = Path(__file__).resolve().parents[1] / "resources" / "presets" / "train"
DEFAULT_PRESET = "demo-scenes-64.toml"
STAGE_FIELDS = (("name", str), ("resolution", int), ("steps", int), ("batch_size", int), ("micro_batch_size", int),
                ("lr", float), ("warmup_steps", int), ("lr_schedule", str), ("caption_dropout", float),
                ("sample_every", int), ("checkpoint_every", int), ("datasets", list))
STAGE_LABELS = ("Name", "Resolution", "Steps", "Batch", "Micro-batch", "Learning rate", "Warm-up", "Schedule",
                "Caption dropout", "Sample every", "Checkpoint every", "Datasets (blank: all)")
STAGE_LABEL = dict(zip((name for name, _ in STAGE_FIELDS), STAGE_LABELS))


def problems_for(config: dict, prefixes: tuple[str, ...]) -> list[str]:
    """The trainer's own complaints about `config` that concern these fields."""
    try:
        parse_config(config, "the wizard's config")
    except ConfigError as exc:
        lines = [line.strip().lstrip("-• ").strip() for line in str(exc).splitlines()]
        return [line for line in lines if line.startswith(prefixes)]
    return []


class _Page(QWizardPage):
    """A page that shows why Next is blocked. Its problems are worked out once per change (`changed()`, and
    on arriving at the page), not at each of Qt's many isComplete() calls: some parse the config and read
    the model's safetensors headers."""

    prefixes: tuple[str, ...] = ()

    def __init__(self, wizard: TrainWizard, title: str, subtitle: str):
        super().__init__()
        self.owner = wizard
        self.setTitle(title)
        self.setSubTitle(subtitle)
        self.problem = plain_label()
        self.problem.setWordWrap(True)
        self.problem.setStyleSheet("color: #c83c3c;")
        self._found: list[str] | None = None  # the problems, None until worked out after a change

    def problems(self) -> list[str]:
        return problems_for(self.owner.config, self.prefixes) if self.prefixes else []

    def isComplete(self) -> bool:  # noqa: N802 (Qt naming)
        if self._found is None:
            self._found = self.problems()
            self.problem.setText("\n".join(self._found))
        return not self._found

    def changed(self) -> None:
        self._found = None
        self.completeChanged.emit()


class StartPage(_Page):
    def __init__(self, wizard):
        super().__init__(wizard, "Start", "Start a new run from a preset or from an earlier run's settings, or "
                         "resume a run that was stopped or interrupted.")
        self.preset = QComboBox()
        self.descriptions = {}  # preset -> its first comment line, shown whole under the list
        for path in sorted(PRESETS.glob("*.toml")):
            comment = next((line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#")), "")
            self.preset.addItem(path.stem, str(path))
            self.descriptions[str(path)] = comment
        self.preset_description = plain_label()
        self.preset_description.setWordWrap(True)
        self.preset.currentIndexChanged.connect(
            lambda _: self.preset_description.setText(self.descriptions.get(self.preset.currentData(), "")))
        self.preset.setCurrentIndex(max(0, self.preset.findData(str(PRESETS / DEFAULT_PRESET))))
        self.preset_description.setText(self.descriptions.get(self.preset.currentData(), ""))
        found = scan_runs(runs_dir())
        self.earlier = QComboBox()
        for run in found:
            if (run.path / "config.toml").is_file():
                self.earlier.addItem(f"{run.name} ({run.state})", str(run.path / "config.toml"))
        if wizard.template is not None and self.earlier.findData(str(wizard.template)) < 0:
            self.earlier.insertItem(0, wizard.template.parent.name, str(wizard.template))
        self.resumable = QComboBox()
        for run in found:
            if can_resume(RunFolder(run.path), run.state):
                self.resumable.addItem(f"{run.name} ({run.state} at step {run.step}/{run.total})", str(run.path))
        self.from_preset = QRadioButton("New run from a preset")
        self.from_earlier = QRadioButton("New run with an earlier run's settings")
        self.resume = QRadioButton("Resume a stopped or interrupted run")
        (self.from_earlier if wizard.template is not None else self.from_preset).setChecked(True)
        for radio, choices, none in ((self.from_earlier, self.earlier, "no earlier run yet"),
                                     (self.resume, self.resumable, "no stopped or interrupted run")):
            choices.setPlaceholderText(none)
            radio.setEnabled(choices.count() > 0)
            choices.setEnabled(choices.count() > 0)
        self.name = QLineEdit()
        self.folder = plain_label()
        self.folder.setWordWrap(True)
        for radio, choices in ((self.from_preset, self.preset), (self.from_earlier, self.earlier),
                               (self.resume, self.resumable)):
            radio.toggled.connect(lambda on: on and self._load())  # the radio turned off loads nothing
            choices.currentIndexChanged.connect(lambda _, radio=radio: self._choose(radio))
        self.name.textChanged.connect(self._named)
        form = QFormLayout(self)
        form.addRow(self.from_preset, self.preset)
        form.addRow("", self.preset_description)
        form.addRow(self.from_earlier, self.earlier)
        form.addRow(self.resume, self.resumable)
        form.addRow("Run name", self.name)
        form.addRow("", self.folder)
        form.addRow(self.problem)
        self._load()

    def _choose(self, radio: QRadioButton) -> None:
        """A choice in a radio's list selects that radio; it loads once, through the radio or here."""
        if radio.isChecked():
            self._load()
        else:
            radio.setChecked(True)

    def _load(self) -> None:
        resuming = self.resume.isChecked()
        self.owner.resume_dir = Path(self.resumable.currentData()) if resuming and self.resumable.count() else None
        self.name.setEnabled(not resuming)
        self.setFinalPage(resuming)
        self.owner.setButtonText(QWizard.FinishButton, "Resume" if resuming else "Launch")
        source = (self.preset if self.from_preset.isChecked() else self.earlier).currentData()
        if not resuming and source:
            self.owner.load(Path(source))
            self.owner.config["name"] = fresh_run_name(self.owner.config.get("name", "run"))
            self.name.setText(self.owner.config["name"])  # set in the config first: the same text emits nothing
        self._describe_folder()
        self.changed()

    def _describe_folder(self) -> None:
        if self.resume.isChecked():
            self.folder.setText(f"Continues in {self.owner.resume_dir} from its newest complete checkpoint, with "
                                "its own settings." if self.owner.resume_dir else "")
        else:
            self.folder.setText(f"The run folder: {runs_dir() / self.name.text().strip()}")

    def nextId(self) -> int:  # noqa: N802 (Qt naming)
        return -1 if self.resume.isChecked() else super().nextId()

    def _named(self, text: str) -> None:
        self.owner.config["name"] = text.strip()
        self._describe_folder()
        self.changed()

    def problems(self) -> list[str]:
        if self.resume.isChecked():
            return [] if self.owner.resume_dir else ["No run can be resumed: a run needs a complete checkpoint "
                                                     "and no process still training it."]
        if self.from_earlier.isChecked() and not self.earlier.count():
            return ["There is no earlier run to copy yet: start from a preset."]
        name = self.owner.config.get("name", "")
        if not name or name.startswith(".") or any(c in name for c in '/\\:*?"<>|'):
            return ["Give the run a name without / \\ : * ? \" < > | (and not starting with a dot)."]
        folder = runs_dir()
        if (folder / name).exists():
            return [f"A run named {name} exists already in {folder}: choose another name (runs are never "
                    "overwritten)."]
        existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
        if not os.access(existing, os.W_OK):
            return [f"Cannot write in {existing} (read-only or not yours): the runs folder {folder} must be "
                    "writable. Set LUMINA_STUDIO_HOME to a folder you can write in."]
        return []


def name_datasets(config: dict) -> None:
    """Every dataset gets a name (its folder's or file's stem, numbered when taken) for the stages to pick it by;
    a stage's names that no dataset has any more are dropped (an empty list trains on all of them)."""
    names = set()
    for dataset in config.get("datasets", []):
        base = dataset.get("name") or Path(str(dataset.get("path", ""))).stem or "data"
        dataset["name"] = first_free(base, names.__contains__)
        names.add(dataset["name"])
    for stage in config.get("stages", []):
        if isinstance(stage.get("datasets"), list):
            stage["datasets"] = [name for name in stage["datasets"] if name in names]


class DataPage(_Page):
    prefixes = ("datasets",)

    def __init__(self, wizard):
        super().__init__(wizard, "Datasets", "Folders of images with .txt captions, Hugging Face imagefolders or "
                         "the authors' .jsonl files. Each is checked as the trainer will: usable images, missing "
                         "captions, unreadable or too small images, and each stage's image sizes (buckets).")
        self.list = QListWidget()
        self.report = QPlainTextEdit()
        self.report.setReadOnly(True)
        add_folder, add_file, remove = QPushButton("Add folder…"), QPushButton("Add .jsonl…"), QPushButton("Remove")
        self.check_button, self.stop_button = QPushButton("Check again"), QPushButton("Stop checking")
        self.review = QComboBox()  # the Caption tab's review marks, for every dataset folder
        for key, label in REVIEW_FILTERS.items():
            self.review.addItem(label, key)
        self.review.setToolTip("Which images of a folder reviewed in the Caption tab train (its ✓ ✎ ✗ marks); "
                               "the report counts what is left out")
        self.review.currentIndexChanged.connect(self._review_changed)
        add_folder.clicked.connect(self._add_folder)
        add_file.clicked.connect(self._add_file)
        remove.clicked.connect(self._remove)
        self.check_button.clicked.connect(self.check)
        self.stop_button.clicked.connect(self.stop_check)
        buttons = QHBoxLayout()
        for button in (add_folder, add_file, remove):
            buttons.addWidget(button)
        buttons.addStretch(1)
        buttons.addWidget(self.check_button)
        buttons.addWidget(self.stop_button)
        review_row = QHBoxLayout()
        review_row.addWidget(QLabel("Images that train, by their review marks:"))
        review_row.addWidget(self.review)
        review_row.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.list, 1)
        layout.addLayout(buttons)
        layout.addLayout(review_row)
        layout.addWidget(self.report, 2)
        layout.addWidget(self.problem)
        self.result: DatasetCheck | str | None = None  # the check, or why there is none ("checking", "stopped", …)
        self.checking = BackgroundTask(self)

    def initializePage(self) -> None:  # noqa: N802
        self.list.clear()
        for dataset in self.owner.config.get("datasets", []):
            self.list.addItem(dataset["path"])
        first = next(iter(self.owner.config.get("datasets", [])), {})
        self.review.blockSignals(True)
        self.review.setCurrentIndex(max(0, self.review.findData(first.get("review", "not_rejected"))))
        self.review.blockSignals(False)
        self.check()

    def _review_changed(self) -> None:
        for dataset in self.owner.config.get("datasets", []):
            dataset["review"] = self.review.currentData()
        self.check()

    def cleanupPage(self) -> None:  # noqa: N802 (Back from here)
        self.stop_check()

    def paths(self) -> list[str]:
        return [self.list.item(i).text() for i in range(self.list.count())]

    def _sync(self) -> None:
        old = {d["path"]: d for d in self.owner.config.get("datasets", [])}
        template = {k: v for k, v in next(iter(old.values()), {"min_side": 32}).items() if k not in ("path", "name")}
        self.owner.config["datasets"] = [old.get(p, template | {"path": p, "review": self.review.currentData()})
                                         for p in self.paths()]
        name_datasets(self.owner.config)
        self.check()

    def _add_folder(self) -> None:
        chosen = QFileDialog.getExistingDirectory(self, "A folder of captioned images")
        if chosen:
            self.list.addItem(chosen)
            self._sync()

    def _add_file(self) -> None:
        chosen, _ = QFileDialog.getOpenFileName(self, "The authors' jsonl", "", "JSON lines (*.jsonl *.json)")
        if chosen:
            self.list.addItem(chosen)
            self._sync()

    def _remove(self) -> None:
        for item in self.list.selectedItems():
            self.list.takeItem(self.list.row(item))
        self._sync()

    def check(self) -> None:
        """The trainer's own dataset check (trainer.datasets.check_datasets) in the background; a newer check
        or Stop checking ends the one running."""
        self.checking.stop()
        self.result = None
        if self.paths() and all(Path(p).exists() for p in self.paths()):
            try:
                run = parse_config(self.owner.config, "the wizard's config")
            except ConfigError as exc:
                self.result = str(exc)
            else:
                self.result = "checking"
                self.checking.start(lambda should_stop: check_datasets(run, should_stop), self._checked,
                                    lambda exc: self._checked(str(exc)))
        self._show()
        self.changed()

    def stop_check(self) -> None:
        if self.checking.running:
            self.checking.stop()
            self._checked("stopped")

    def _checked(self, result) -> None:
        self.result = result
        self._show()
        self.changed()

    def _show(self) -> None:
        checking = self.result == "checking"
        self.stop_button.setEnabled(checking)
        self.check_button.setEnabled(not checking and bool(self.paths()))
        if isinstance(self.result, DatasetCheck):
            self.report.setPlainText(self.result.text())
        else:
            self.report.setPlainText({"checking": "Checking every image (large folders take a moment)…",
                                      "stopped": "The check was stopped."}.get(self.result, self.result or ""))

    def problems(self) -> list[str]:
        if not self.paths():
            return ["Add at least one dataset."]
        missing = [f"{path} does not exist." for path in self.paths() if not Path(path).exists()]
        if missing:
            return missing + super().problems()
        if self.result == "checking":
            return ["Checking the datasets…"]
        if self.result == "stopped":
            return ["The check was stopped: Check again to go on (the trainer checks every image before it starts)."]
        if not isinstance(self.result, DatasetCheck):
            return [str(self.result or "The datasets have not been checked.")]
        found = []
        for report in self.result.reports:
            if report.items == 0:
                found.append(f"{report.path} has no image with a caption: caption it in the Caption tab first."
                             if report.no_caption else f"{report.path} has no usable image (see the report above).")
        return found + self.result.empty_stages + super().problems()


class ModelPage(_Page):
    prefixes = ("base_model", "components")

    def __init__(self, wizard):
        super().__init__(wizard, "Base model", "The model to fine-tune: the built-in demo model, or a Lumina-Image "
                         "2.0 model you added (File → Models…).")
        self.model = QComboBox()
        self.model.currentIndexChanged.connect(self._chosen)
        self.info = plain_label()
        self.info.setWordWrap(True)
        form = QFormLayout(self)
        form.addRow("Model", self.model)
        form.addRow("", self.info)
        form.addRow(self.problem)

    def initializePage(self) -> None:  # noqa: N802
        self.model.blockSignals(True)
        self.model.clear()
        for entry in available_models():
            self.model.addItem(entry["name"], entry["name"])
        current = self.owner.config.get("base_model", "demo")
        if self.model.findData(current) < 0:
            self.model.addItem(current, current)
        self.model.setCurrentIndex(self.model.findData(current))
        self.model.blockSignals(False)
        self._chosen()

    def _chosen(self) -> None:
        self.owner.config["base_model"] = self.model.currentData() or ""
        self.changed()

    def problems(self) -> list[str]:
        name = self.owner.config.get("base_model", "")
        try:
            source = find_model(name)
            known_architecture(source)  # a pickled file (None here) is checked by the review page's check
        except LuminaError as exc:
            self.info.setText("")
            return [str(exc)]
        self.info.setText(f"{source.name}: {source.components}")
        return super().problems()


class StagesPage(_Page):
    prefixes = ("stages",)

    def __init__(self, wizard):
        super().__init__(wizard, "Stages", "Progressive training: each stage at a resolution, for some steps. "
                         "Resolutions must not decrease; the batch must be a multiple of the micro-batch.")
        self.table = QTableWidget(0, len(STAGE_FIELDS))
        self.table.setHorizontalHeaderLabels(STAGE_LABELS)
        self.table.itemChanged.connect(lambda _: self._read())
        add, remove = QPushButton("Add stage"), QPushButton("Remove stage")
        add.clicked.connect(self._add)
        remove.clicked.connect(self._remove)
        buttons = QHBoxLayout()
        buttons.addWidget(add)
        buttons.addWidget(remove)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addLayout(buttons)
        layout.addWidget(self.problem)

    def initializePage(self) -> None:  # noqa: N802
        names = ", ".join(d.get("name", "") for d in self.owner.config.get("datasets", []))
        column = list(STAGE_LABEL).index("datasets")
        self.table.horizontalHeaderItem(column).setToolTip(
            f"The datasets this stage trains on, by name, comma-separated ({names}); blank: all of them")
        self._fill(self.owner.config.get("stages", []))

    def _fill(self, stages: list[dict]) -> None:
        self.owner.config["stages"] = [dict(stage) for stage in stages]
        self.table.blockSignals(True)
        self.table.setRowCount(len(stages))
        for row, stage in enumerate(stages):
            for column, (name, _) in enumerate(STAGE_FIELDS):
                default = {"lr_schedule": "constant", "warmup_steps": 0, "caption_dropout": 0.1, "sample_every": 0,
                           "checkpoint_every": 0}.get(name, "")
                value = stage.get(name, default)
                text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
                self.table.setItem(row, column, QTableWidgetItem(text))
        self.table.blockSignals(False)
        self.table.resizeColumnsToContents()  # every column in view, the Datasets one too
        self._read()

    def _read(self) -> None:
        stages, self.bad_cells = [], []
        shown = self.owner.config.get("stages", [])  # the rows as last filled
        for row in range(self.table.rowCount()):
            stage = dict(shown[row]) if row < len(shown) else {}  # keeps what has no column (its system prompt)
            for column, (name, kind) in enumerate(STAGE_FIELDS):
                text = (self.table.item(row, column).text() if self.table.item(row, column) else "").strip()
                if kind is list:  # dataset names, comma-separated
                    stage[name] = [part.strip() for part in text.split(",") if part.strip()]
                    continue
                try:
                    stage[name] = kind(text)
                except ValueError:
                    wanted = "a whole number" if kind is int else "a number"
                    self.bad_cells.append(f"{self._cell(row, name)}: '{text}' is not {wanted}")
                    stage[name] = text
            stages.append(stage)
        self.owner.config["stages"] = stages
        self.changed()

    def _add(self) -> None:
        stages = self.owner.config.get("stages", [])
        last = dict(stages[-1]) if stages else {"name": "stage", "resolution": 256, "steps": 100, "batch_size": 8,
                                                "micro_batch_size": 8, "lr": 2e-5}
        last["name"] = f"stage-{len(stages) + 1}"
        self._fill(stages + [last])

    def _remove(self) -> None:
        rows = sorted({index.row() for index in self.table.selectedIndexes()}, reverse=True)
        stages = self.owner.config.get("stages", [])
        for row in rows:
            stages.pop(row)
        self._fill(stages)

    def _cell(self, row: int, name: str) -> str:
        """How the table names a cell: 'Stage 2, Resolution' (the config says stages[1].resolution)."""
        return f"Stage {row + 1}, {STAGE_LABEL.get(name, name)}"

    def problems(self) -> list[str]:
        found = list(getattr(self, "bad_cells", []))
        if not self.owner.config.get("stages"):
            found.append("Add at least one stage.")
        if found:
            return found
        return [re.sub(r"^stages\[(\d+)\]\.(\w+)", lambda m: self._cell(int(m[1]), m[2]), line)
                for line in super().problems()]


class HardwarePage(_Page):
    prefixes = ("device", "precision")

    def __init__(self, wizard):
        super().__init__(wizard, "Hardware", "Where to train. Several GPUs share the model (FSDP: weights, "
                         "gradients and optimizer are split across them). The estimate is the trainer's own.")
        self.device = QComboBox()
        for label, value in (("Automatic (the GPUs if there are any, else the CPU)", "auto"), ("GPU (CUDA)", "cuda"),
                             ("CPU (tiny models: the demo)", "cpu")):
            self.device.addItem(label, value)
        self.gpus_found = nvidia_gpus()
        self.gpu_boxes = []
        gpu_list = QVBoxLayout()
        for gpu in self.gpus_found:
            box = QCheckBox(gpu.describe())
            box.setChecked(True)
            box.toggled.connect(self._chosen)
            gpu_list.addWidget(box)
            self.gpu_boxes.append(box)
        if not self.gpus_found:
            gpu_list.addWidget(QLabel("No NVIDIA GPU found (nvidia-smi): training runs on the CPU."))
        self.estimate = QLabel()
        self.estimate.setWordWrap(True)
        self.estimate.setTextFormat(Qt.RichText)
        self.device.currentIndexChanged.connect(self._chosen)
        # How weights, gradients, optimizer and EMA are held (trainer/memory.py's modes, least costly first)
        self.mode = QComboBox()
        self.mode.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)  # long items: no wider page
        self.mode.setMinimumContentsLength(40)
        self.mode.setToolTip("Lighter memory modes let a smaller GPU train the whole model; each item says what it "
                             "costs. The estimate is for one GPU, the largest stage.")
        self.mode.activated.connect(self._use_mode)
        self.fit_button = QPushButton("Fit to my GPU")
        self.fit_button.setToolTip("Choose the least costly memory mode that fits the chosen GPU")
        self.fit_button.clicked.connect(self._fit)
        self.mode_note = plain_label()
        self.mode_note.setWordWrap(True)
        self.fits: list[ModeFit] = []
        self.choices: list = []  # (mode, the config's stages in it) per item of the list
        self.applied = ""  # what the last mode chosen changed besides the memory settings
        mode_row = QHBoxLayout()
        mode_row.addWidget(self.mode, 1)
        mode_row.addWidget(self.fit_button)
        form = QFormLayout(self)
        form.addRow("Device", self.device)
        form.addRow("GPUs", gpu_list)
        form.addRow("Memory mode", mode_row)
        form.addRow("", self.mode_note)
        form.addRow("Memory needed", self.estimate)
        form.addRow(self.problem)

    def initializePage(self) -> None:  # noqa: N802
        self.device.setCurrentIndex(max(0, self.device.findData(self.owner.config.get("device", "auto"))))
        self._chosen()

    def device_used(self) -> str:
        chosen = self.device.currentData()
        return ("cuda" if self.gpus_found else "cpu") if chosen == "auto" else chosen

    def chosen_gpus(self) -> list[GPU]:
        if self.device_used() != "cuda":
            return []
        return [gpu for gpu, box in zip(self.gpus_found, self.gpu_boxes) if box.isChecked()]

    def _chosen(self) -> None:
        self.owner.config["device"] = self.device.currentData()
        chosen = self.chosen_gpus()
        self.owner.gpu_ids = [gpu.index for gpu in chosen] if len(chosen) < len(self.gpus_found) else []
        for box in self.gpu_boxes:
            box.setEnabled(self.device_used() == "cuda")
        self.changed()

    def problems(self) -> list[str]:
        device = self.device_used()
        if device == "cuda" and not self.gpus_found:
            self.estimate.setText("")
            return ["No GPU was found here: choose Automatic or CPU."]
        chosen = self.chosen_gpus()
        if device == "cuda" and not chosen:
            self.estimate.setText("")
            return ["Choose at least one GPU."]
        found = super().problems()
        model = model_facts(self.owner.config)  # read once: the model's config and header
        current = self._show_modes(chosen, model)
        if len(chosen) > 1 and model and current != MEMORY_MODES[0]:
            found.append("The lighter memory modes work with one GPU for now: choose one GPU, or today's mode "
                         "(several GPUs share the model instead).")
        over = self._show_estimate(device, chosen, model) if not found else []
        return found + over

    def _show_modes(self, chosen: list[GPU], found) -> MemoryMode | None:
        """Every memory mode, with its estimate against the chosen GPU where one is chosen (the modes are for
        one GPU); the config's own settings where they are none of the modes. Returns the config's mode (None:
        none of them)."""
        self.fits = mode_fits(*found, chosen[0].memory) if found and len(chosen) == 1 else []
        self.choices = [(fit.mode, fit.run) for fit in self.fits]
        if found and not self.fits:  # the CPU: the modes without an estimate
            self.choices = [(mode, in_mode(found[2], mode)) for mode in MEMORY_MODES]
        run = found[2] if found else None
        current = next((mode for mode in MEMORY_MODES if run and mode.optimizer == run.optimizer.name
                        and run.memory == in_mode(run, mode).memory), None)
        self.mode.blockSignals(True)
        self.mode.clear()
        for i, (mode, run) in enumerate(self.choices):
            fit = self.fits[i] if self.fits else None
            changes = mode_changes(run, found[2]) if fit else ""
            self.mode.addItem(mode_label(run) + (f": about {human_size(fit.need)}, {'fits' if fit.fits else 'too big'}"
                                                 if fit else "") + (f" (with {changes})" if changes else ""))
        index = MEMORY_MODES.index(current) if current in MEMORY_MODES else -1
        if index < 0 and found:
            self.mode.addItem(f"this config's own: {mode_label(found[2])}")
            index = self.mode.count() - 1
        self.mode.setCurrentIndex(index)
        self.mode.blockSignals(False)
        self.mode.setEnabled(found is not None)
        self.fit_button.setEnabled(bool(self.fits))
        cost = MEMORY_MODES[index].cost if 0 <= index < len(MEMORY_MODES) else ""
        self.mode_note.setText(f"{cost}. {self.applied}" if self.applied else cost)
        return current

    def _use_mode(self, index: int) -> None:
        """Write the chosen mode's settings into the config, with the activation checkpointing and batches it
        needs (the Stages page shows them)."""
        if not 0 <= index < len(self.choices):
            return
        mode, run = self.choices[index]
        config = self.owner.config
        found = model_facts(config)
        changes = mode_changes(run, found[2]) if found else ""
        self.applied = f"Changed with it: {changes} (the Stages page shows the batches)." if changes else ""
        config["memory"] = dict(mode.memory)
        config["optimizer"] = {**config.get("optimizer", {}), "name": mode.optimizer}
        config["activation_checkpointing"] = run.activation_checkpointing
        for stage, changed in zip(config.get("stages", []), run.stages):
            stage["batch_size"], stage["micro_batch_size"] = changed.batch_size, changed.micro_batch_size
        self.changed()

    def _fit(self) -> None:
        fitting = [i for i, fit in enumerate(self.fits) if fit.fits]
        if not fitting:
            self.mode_note.setText("No memory mode fits this GPU: lower the stages' resolution on the Stages page, "
                                   "or choose a larger GPU or several.")
            return
        self._use_mode(fitting[0])

    def _show_estimate(self, device: str, chosen: list[GPU], found) -> list[str]:
        """Each stage's memory against the smallest chosen GPU, or the computer's memory on the CPU (red when
        over); the problems that makes."""
        estimates = memory_estimates(found, device, max(1, len(chosen)))
        if estimates is None:
            self.estimate.setText("The Review page's check estimates memory for this model.")
            return []
        if chosen:
            smallest = min(chosen, key=lambda gpu: gpu.memory)
            limit, holder = smallest.memory, f"GPU {smallest.index}"
            where = f"per process, against GPU {smallest.index} ({human_size(limit)}), the smallest chosen"
            fix = "or choose more GPUs (FSDP splits the model across them)"
        else:
            limit, holder = ram_size(), "this computer"
            where = f"against this computer's memory ({human_size(limit)})"
            fix = "or train on a GPU"
        lines, over = [], []
        for estimate in estimates:
            line = f"{html.escape(estimate.stage)}: about {human_size(estimate.total)}"
            if estimate.total > limit:
                line = f"<span style='color:#c83c3c'>{line} — more than {holder} has</span>"
                over.append(f"Stage '{estimate.stage}' needs about {human_size(estimate.total)}"
                            f"{' per GPU' if chosen else ''}, but {holder} has {human_size(limit)}: lower its "
                            f"micro-batch on the Stages page, {fix}.")
            lines.append(line)
        fitting = next((fit for fit in self.fits if fit.fits), None)
        if over and fitting:  # one GPU: which memory mode would fit it
            over.append(f"{fitting.label} would fit (about {human_size(fitting.need)}, estimated): press Fit to my "
                        "GPU, or choose it under Memory mode.")
        elif over and len(chosen) == 1:
            over.append("No memory mode fits this GPU: lower the stages' resolution, or choose a larger GPU.")
        self.estimate.setText("<br>".join(lines) + f"<br><small>{where}</small>")
        return over


class SamplesPage(_Page):
    prefixes = ("samples", "keep_checkpoints")

    def __init__(self, wizard):
        super().__init__(wizard, "Samples and checkpoints", "Sample images show how training goes (each stage's "
                         "'Sample every' sets when); checkpoints are what you can resume from and use.")
        self.prompts = QPlainTextEdit()
        self.prompts.setPlaceholderText("one prompt per line (none: no samples)")
        self.keep = QSpinBox()
        self.keep.setRange(1, 100)
        self.disk = plain_label()
        self.disk.setWordWrap(True)
        self.words = plain_label()  # the demo's vocabulary: a sample of words it never saw shows nothing of them
        self.words.setWordWrap(True)
        self.prompts.textChanged.connect(self._read)
        self.keep.valueChanged.connect(self._read)
        form = QFormLayout(self)
        form.addRow("Sample prompts", self.prompts)
        form.addRow("", self.words)
        form.addRow("Checkpoints to keep", self.keep)
        form.addRow("", self.disk)
        form.addRow(self.problem)

    def initializePage(self) -> None:  # noqa: N802
        keep, prompts = self.owner.config.get("keep_checkpoints", 2), self.owner.config.get("samples", {})
        self.keep.setValue(int(keep))  # before the prompts: setting those reads both fields back
        self.prompts.setPlainText("\n".join(prompts.get("prompts", [])))

    def _read(self) -> None:
        samples = dict(self.owner.config.get("samples", {}))
        samples["prompts"] = [line.strip() for line in self.prompts.toPlainText().splitlines() if line.strip()]
        self.owner.config["samples"] = samples
        self.owner.config["keep_checkpoints"] = self.keep.value()
        self.changed()

    def problems(self) -> list[str]:
        found = super().problems()
        sampling = any(int(s.get("sample_every") or 0) > 0 for s in self.owner.config.get("stages", [])
                       if isinstance(s.get("sample_every"), int))
        if sampling and not self.owner.config.get("samples", {}).get("prompts"):
            found.append("A stage samples every few steps, but there is no sample prompt: add one, or set the "
                         "stages' 'Sample every' to 0.")
        demo = self.owner.config.get("base_model") == DEMO_NAME
        self.words.setText(vocabulary_warning(" ".join(self.owner.config.get("samples", {}).get("prompts", [])))
                           if demo else "")
        need, free = disk_needed(self.owner.config), disk_free()
        self.disk.setText(f"Disk: about {human_size(need)} for {self.keep.value()} checkpoint(s); "
                          f"{human_size(free)} free in {runs_dir()}.")
        if need > free:
            found.append(f"Not enough disk space: the checkpoints need about {human_size(need)}, "
                         f"{human_size(free)} is free. Keep fewer checkpoints or free some space.")
        return found


class ReviewPage(_Page):
    def __init__(self, wizard):
        super().__init__(wizard, "Review", "The config this run will use and the command that runs it. The check "
                         "runs the trainer's own validation: datasets, buckets and the memory each stage needs.")
        self.toml = QPlainTextEdit()
        self.toml.setReadOnly(True)
        self.command = QLineEdit()
        self.command.setReadOnly(True)
        self.check_button = QPushButton("Check again")
        self.check_button.clicked.connect(self.check)
        self.save_button = QPushButton("Save config…")
        self.save_button.clicked.connect(self.save)
        self.output = QPlainTextEdit()
        self.output.setReadOnly(True)
        self.process: QProcess | None = None
        self.passed = False
        buttons = QHBoxLayout()
        buttons.addWidget(self.check_button)
        buttons.addWidget(self.save_button)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.toml, 2)
        layout.addWidget(QLabel("Command line"))
        layout.addWidget(self.command)
        layout.addLayout(buttons)
        layout.addWidget(self.output, 1)
        layout.addWidget(self.problem)

    def initializePage(self) -> None:  # noqa: N802
        self.owner.prepare_folder()
        self.toml.setPlainText(tomli_w.dumps(self.owner.config))
        self.command.setText(shlex.join(["lumina-studio", "train", str(self.owner.config_path), "--run-dir",
                                         str(self.owner.run_dir), *self.owner.gpu_args()]))
        self.check()

    def check(self) -> None:
        self.passed = False
        self.owner.write_config()
        self.output.setPlainText("Checking (the trainer reads every dataset and estimates memory)…")
        if self.process is not None:
            self.process.kill()
        self.process = QProcess(self)
        self.process.setProcessChannelMode(QProcess.MergedChannels)
        self.process.finished.connect(self._checked)
        command = train_command(str(self.owner.config_path), "--check", *self.owner.gpu_args())
        self.process.start(command[0], command[1:])
        self.changed()

    def _checked(self, code: int, _status) -> None:
        text = bytes(self.process.readAll()).decode("utf-8", "replace")
        self.output.setPlainText(text)
        self.over_memory = "but the smallest GPU has" in text  # the trainer's own estimate, against the GPU
        self.passed = code == 0 and not self.over_memory
        self.changed()

    def problems(self) -> list[str]:
        if self.process is not None and self.process.state() != QProcess.NotRunning:
            return ["Checking…"]
        if getattr(self, "over_memory", False):
            return ["A stage needs more memory than the GPU has (see above): lower its micro-batch on the Stages "
                    "page, or use more GPUs."]
        if not self.passed:
            return ["The check did not pass: see above (fix it on an earlier page with Back)."]
        return []

    def save(self) -> None:
        chosen, _ = QFileDialog.getSaveFileName(self, "Save the config", str(Path.home() / "train.toml"),
                                                "TOML (*.toml)")
        if chosen:
            Path(chosen).write_text(tomli_w.dumps(self.owner.config), encoding="utf-8")


class TrainWizard(QWizard):
    def __init__(self, dataset: Path | None = None, template: Path | None = None, parent=None):
        super().__init__(parent)
        self.setWindowTitle("New training run")
        self.template, self.dataset = template, dataset
        self.config: dict = {}
        self.gpu_ids: list[int] = []
        self.resume_dir: Path | None = None
        self.launched = None
        self.run_dir: Path | None = None
        self.config_path: Path | None = None
        pages = [page(self) for page in (StartPage, DataPage, ModelPage, StagesPage, HardwarePage, SamplesPage,
                                         ReviewPage)]
        for page in pages:
            self.addPage(page)
        self.datasets_page = pages[1]
        # a page's problems depend on what the pages before it set: worked out again on arriving
        self.currentIdChanged.connect(lambda _: self.currentPage() and self.currentPage().changed())
        self.resize(900, 640)

    def load(self, path: Path) -> None:
        config = tomllib.loads(path.read_text(encoding="utf-8"))
        if self.dataset is not None:  # the folder handed over replaces the preset's datasets, with the first's settings
            first = {k: v for k, v in (config.get("datasets") or [{}])[0].items() if k != "name"}
            config["datasets"] = [first | {"path": str(self.dataset)}]
        name_datasets(config)
        self.config = config

    def gpu_args(self) -> list[str]:
        """All GPUs by default; the ones ticked when only some are."""
        return ["--gpu-ids", ",".join(map(str, self.gpu_ids))] if self.gpu_ids else []

    def prepare_folder(self) -> None:
        if self.run_dir is not None and self.run_dir.name != self.config["name"]:
            self.remove_draft()  # renamed after the review page wrote its draft
        self.run_dir = runs_dir() / self.config["name"]
        self.config_path = self.run_dir / "wizard.toml"

    def write_config(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(tomli_w.dumps(self.config), encoding="utf-8")

    def accept(self) -> None:
        if self.resume_dir is not None:
            self.launched = (self.resume_dir, resume(self.resume_dir))
        else:
            self.write_config()
            self.launched = (self.run_dir, launch(self.config_path, self.run_dir, *self.gpu_args()))
        super().accept()

    def reject(self) -> None:
        self.datasets_page.stop_check()  # if it still runs
        self.remove_draft()
        super().reject()

    def remove_draft(self) -> None:
        """The wizard's own draft folder (its wizard.toml and the check's log); never a folder something ran in."""
        if self.run_dir is not None and self.run_dir.exists() and not (self.run_dir / "config.toml").exists():
            shutil.rmtree(self.run_dir, ignore_errors=True)


