"""Generate panel: the prompt and settings form, the job queue, progress with ETA, live previews."""

from __future__ import annotations

import random
from pathlib import Path

from PySide6.QtCore import QRegularExpression, Qt, QTimer, Signal
from PySide6.QtGui import QImage, QPixmap, QRegularExpressionValidator
from PySide6.QtWidgets import (
    QComboBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPlainTextEdit, QProgressBar,
    QPushButton, QScrollArea, QSpinBox, QSplitter,
    QVBoxLayout, QWidget,
)

from core.errors import LuminaError
from core.generation.messages import CountTokens, GenerateImages, ImageProgress, ImageSaved, MeasureBackends, Preview
from core.metadata import read_settings
from core.generation.prompts import SYSTEM_PROMPTS, TokenCount
from core.generation.request import COMPAT_NAMES, MAX_SEED, SOLVER_NAMES, GenerationRequest, check_field, request_fields
from core.sampling.cache import APP_PRESETS
from core.models.registry import DEMO_NAME
from core.scenes.world import vocabulary_warning
from core.generation.sizes import trained_sizes
from core.storage import library_dir

from .background import run_in_background
from .image_view import ImageView
from .job_queue import JobQueueView
from .plain_text import plain_label, tooltip
from .wheel_guard import guard_wheel

SEED_MODES = ("random", "fixed", "increment")
BACKENDS = ("auto", "torch", "onnx")
CUSTOM_SIZE = "Custom"


class GeneratePanel(QWidget):
    model_manager_requested = Signal()
    model_changed = Signal(str)
    backend_changed = Signal(str)
    settings_loaded = Signal(str)  # the image whose settings now fill the form

    def __init__(self, client, parent=None):
        super().__init__(parent)
        self._running_job: int | None = None  # the job whose images and previews are on screen
        self._last_image = None  # (pixmap, its parameters text): the running job's last finished image
        self.client = client
        self.store_model_path = False  # File → "Store the model's path in new images"
        self.setAcceptDrops(True)
        self._token_request: int | None = None
        self._build()
        self._token_timer = QTimer(self, singleShot=True, interval=300, timeout=self.ask_token_count)
        self.prompt.textChanged.connect(self._token_timer.start)
        self.system_prompt.currentTextChanged.connect(self._token_timer.start)
        client.answer.connect(self._on_tokens)
        client.started.connect(self._on_started)
        client.progress.connect(self._on_progress)
        client.preview.connect(self._on_preview)
        client.result.connect(self._on_image)
        client.finished.connect(self._on_finished)

    # ---- layout -----------------------------------------------------------------------------------

    def _build(self) -> None:
        form = QFormLayout()
        self.model = QComboBox()
        self.model.setMinimumContentsLength(16)
        self.model.activated.connect(lambda _: self.model_changed.emit(self.model.currentData() or ""))
        # the whole name, where the box cuts it (a name a person chose: shown as written)
        self.model.currentTextChanged.connect(lambda name: self.model.setToolTip(tooltip(name)))
        manage = QPushButton("Manage…")
        manage.clicked.connect(self.model_manager_requested)
        row = QHBoxLayout()
        row.addWidget(self.model, 1)
        row.addWidget(manage)
        form.addRow("Model", row)

        self.prompt = QPlainTextEdit()
        self.prompt.setPlaceholderText("Describe the image…  (Ctrl+Enter to generate)")
        self.prompt.setMinimumHeight(90)
        self.tokens = plain_label(" ")  # names words of the prompt
        self.tokens.setWordWrap(True)  # the over-long warning must not widen the form
        self.negative = QPlainTextEdit()
        self.negative.setPlaceholderText("Negative prompt (optional)")
        self.negative.setMaximumHeight(60)
        self.system_prompt = QComboBox()
        self.system_prompt.addItems(list(SYSTEM_PROMPTS))
        self.system_prompt.setToolTip("The system prompt written before your prompt (the model was trained with these)")
        form.addRow("Prompt", self.prompt)
        form.addRow("", self.tokens)
        form.addRow("Negative", self.negative)
        form.addRow("System prompt", self.system_prompt)

        self.size = QComboBox()
        for width, height in trained_sizes():
            self.size.addItem(f"{width} x {height}", (width, height))
        self.size.addItem(CUSTOM_SIZE, None)
        self.width_box, self.height_box = QSpinBox(), QSpinBox()
        for box in (self.width_box, self.height_box):
            box.setRange(16, 8192)
            box.setSingleStep(16)
            box.setValue(1024)
        self.size.currentIndexChanged.connect(self._size_chosen)
        self.size.setCurrentIndex(self.size.findData((1024, 1024)))
        sizes = QHBoxLayout()
        sizes.addWidget(self.size, 1)
        sizes.addWidget(self.width_box)
        sizes.addWidget(QLabel("x"))
        sizes.addWidget(self.height_box)
        form.addRow("Size", sizes)

        self.steps = QSpinBox(minimum=1, maximum=1000, value=18)
        self.guidance = QDoubleSpinBox(minimum=0, maximum=30, singleStep=0.5, value=4.0)
        self.cfg_trunc = QDoubleSpinBox(minimum=0, maximum=1, singleStep=0.05, value=0.25)
        self.cfg_trunc.setToolTip("Guide only while t < this (t = 0 is noise, 1 the image); 1 guides every step")
        self.cfg_renorm = QDoubleSpinBox(minimum=0, maximum=10, singleStep=0.5, value=1.0)
        self.cfg_renorm.setToolTip("Cap the guided velocity at this multiple of the conditional one (0 = off)")
        self.solver = QComboBox()
        self.solver.addItems(SOLVER_NAMES)
        self.solver.setCurrentText("midpoint")
        form.addRow("Steps", self.steps)
        form.addRow("Guidance", self.guidance)
        form.addRow("CFG truncation", self.cfg_trunc)
        form.addRow("CFG renorm", self.cfg_renorm)
        form.addRow("Solver", self.solver)
        self.shift = ShiftBox()
        self.shift.setToolTip("Time shift: higher spends more steps on the image's layout, lower on its detail; "
                              "model default reads the model's scheduler config (6 for Lumina-Image 2.0)")
        self.compat = QComboBox()
        self.compat.addItems(COMPAT_NAMES)
        self.compat.setToolTip("official: the authors' sampling (time grid, CFG truncation and renorm); diffusers: "
                               "Lumina2Pipeline's, to match images made with diffusers or apps built on it")
        form.addRow("Time shift", self.shift)
        form.addRow("Compat", self.compat)

        self.seed_mode = QComboBox()
        self.seed_mode.addItems(SEED_MODES)
        self.seed = SeedEdit()
        seeds = QHBoxLayout()
        seeds.addWidget(self.seed_mode)
        seeds.addWidget(self.seed, 1)
        form.addRow("Seed", seeds)
        self.count = QSpinBox(minimum=1, maximum=100, value=1)
        form.addRow("Images", self.count)
        self.backend = QComboBox()
        self.backend.addItems(BACKENDS)
        self.backend.setToolTip("auto: whichever backend measured faster on this machine")
        self.backend.activated.connect(lambda _: self.backend_changed.emit(self.backend.currentText()))
        self.cache = QComboBox()
        self.cache.addItems(APP_PRESETS)
        self.cache.setToolTip("Skip transformer work that barely changes between steps (higher = faster, softer)")
        form.addRow("Backend", self.backend)
        form.addRow("Step cache", self.cache)

        self.generate_button = QPushButton("Generate")
        self.generate_button.setDefault(True)
        self.generate_button.clicked.connect(self.request_generation)
        self.message = plain_label()  # names dropped files and carries error messages: never rich text
        self.message.setWordWrap(True)

        form_widget = QWidget()
        form_box = QVBoxLayout(form_widget)
        form_box.addLayout(form)
        form_box.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(form_widget)
        guard_wheel(form_widget)
        self.form_scroll = scroll
        left = QWidget()  # Generate stays in view below the form, however long a warning in it grows
        left.setMinimumWidth(380)
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(scroll, 1)
        left_layout.addWidget(self.generate_button)
        left_layout.addWidget(self.message)

        self.view = ImageView("Your image appears here")
        self.parameters = plain_label()  # holds the prompt
        self.parameters.setWordWrap(True)
        self.parameters.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.progress = QProgressBar()
        self.progress.setFormat("Idle")
        self.progress.setValue(0)

        self.queue = JobQueueView(self.client)

        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.addWidget(self.view, 1)
        right_layout.addWidget(self.parameters)
        right_layout.addWidget(self.progress)
        right_layout.addWidget(self.queue)

        self.splitter = QSplitter()
        self.splitter.addWidget(left)
        self.splitter.addWidget(right)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([400, 880])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.splitter)

    def _size_chosen(self) -> None:
        size = self.size.currentData()
        custom = size is None
        self.width_box.setEnabled(custom)
        self.height_box.setEnabled(custom)
        if size:
            self.width_box.setValue(size[0])
            self.height_box.setValue(size[1])

    # ---- models -------------------------------------------------------------------------------------

    def set_models(self, entries: list[dict], current: str | None) -> None:
        self.model.clear()
        for entry in entries:
            self.model.addItem(entry["name"], entry["name"])
        if current and self.model.findData(current) < 0:
            self.model.addItem(Path(current).name, current)
        if current:
            self.model.setCurrentIndex(self.model.findData(current))
        # the list opens as wide as its longest name ("my-run step 1200" is cut in the closed box)
        self.model.view().setMinimumWidth(self.model.view().sizeHintForColumn(0) + 24)

    # ---- requests -----------------------------------------------------------------------------------

    def _fields(self) -> dict:
        """The form's widget for each request field, and for the seed mode and backend."""
        return {"prompt": self.prompt, "negative_prompt": self.negative, "system_prompt": self.system_prompt,
                "width": self.width_box, "height": self.height_box, "steps": self.steps, "guidance": self.guidance,
                "cfg_trunc": self.cfg_trunc, "cfg_renorm": self.cfg_renorm, "solver": self.solver, "shift": self.shift,
                "compat": self.compat, "seed": self.seed, "count": self.count, "cache": self.cache,
                "seed_mode": self.seed_mode, "backend": self.backend}

    def form_values(self) -> dict:
        """Everything the form holds, for QSettings and for a request."""
        return {name: _read(widget) for name, widget in self._fields().items()}

    def apply_values(self, values: dict) -> None:
        """Fill the form from saved values or from an image's settings: unknown keys and values the request
        would refuse are ignored, so nothing unusable reaches a widget."""
        for name, widget in self._fields().items():
            if name not in values or (values[name] is None and name != "shift"):  # no shift: the model's own
                continue
            if name in request_fields():
                try:
                    check_field(name, values[name])
                except LuminaError:
                    continue
            elif values[name] not in (SEED_MODES if name == "seed_mode" else BACKENDS):
                continue
            _write(widget, values[name])
        if "width" in values or "height" in values:
            index = self.size.findData((self.width_box.value(), self.height_box.value()))
            self.size.setCurrentIndex(index if index >= 0 else self.size.findData(None))

    def use_seed(self, seed: int) -> None:
        self.seed_mode.setCurrentText("fixed")
        self.seed.setValue(seed)

    def request_generation(self) -> None:
        values = self.form_values()
        if values["seed_mode"] == "random":
            self.seed.setValue(random.randrange(self.seed.maximum()))
        request = GenerationRequest.from_values({**values, "seed": self.seed.value()})
        try:
            request.validate()
        except LuminaError as exc:
            self.say(str(exc), error=True)
            return
        label = f"{request.prompt[:60] or '(empty prompt)'}  ·  {request.count} image(s)"
        job = self.client.submit(GenerateImages(request.to_dict(), str(library_dir()), self.store_model_path), label)
        if job is None:
            self.say("No model is loaded: choose one with File → Models…", error=True)
            return
        self.say("")
        if values["seed_mode"] == "increment":
            self.seed.setValue(min(self.seed.value() + values["count"], self.seed.maximum()))

    # ---- engine events ------------------------------------------------------------------------------

    def ask_token_count(self) -> None:
        self._token_request = self.client.ask(CountTokens(self.prompt.toPlainText(),
                                                          self.system_prompt.currentText()))

    def _on_tokens(self, event) -> None:
        answer = event.data
        if answer.request != self._token_request or not isinstance(answer.value, TokenCount):
            return
        count, limit = answer.value.count, answer.value.limit
        unknown = self._vocabulary_warning()
        if count > limit:
            self.tokens.setText(f"{count} / {limit} tokens — the end of the prompt will be cut off")
        elif unknown:
            self.tokens.setText(f"{count} / {limit} tokens. {unknown}")
        else:
            self.tokens.setText(f"{count} / {limit} tokens (system prompt included)")
        self.tokens.setStyleSheet("color: #c0392b;" if count > limit or unknown else "")

    def _vocabulary_warning(self) -> str:
        if self.client.info.get("model", {}).get("name") != DEMO_NAME:
            return ""
        return vocabulary_warning(self.prompt.toPlainText())

    def _on_started(self, job_id: int) -> None:
        job = next((job for job, _ in self.client.jobs() if job.id == job_id), None)
        self.progress.setValue(0)
        if job is not None and isinstance(job.payload, MeasureBackends):  # no image, no preview
            self.progress.setFormat(f"Job #{job_id}: {job.label}…")
            return
        self.parameters.setText(f"Generating job #{job_id}…")
        self.progress.setFormat(f"Job #{job_id}: starting…")
        self._running_job, self._last_image = job_id, None

    def _on_progress(self, event) -> None:
        """One bar for the whole job: image i of n, step s of t; ETA for the job."""
        p: ImageProgress = event.data
        if not isinstance(p, ImageProgress):
            return
        self.progress.setMaximum(p.total * p.count)
        self.progress.setValue(p.image * p.total + p.step)
        steps_left_in_image = p.total - p.step
        left = p.eta
        if steps_left_in_image:  # later images take as long as this one: its seconds per step times their steps
            left += p.eta / steps_left_in_image * p.total * (p.count - p.image - 1)
        image = f"image {p.image + 1}/{p.count}, " if p.count > 1 else ""
        self.progress.setFormat(f"Job #{event.job}: {image}step {p.step}/{p.total}, {left:.0f} s left")
        if p.step == 1 and p.image > 0:  # the preview is the next image now, not the one named below
            self.parameters.setText(f"Generating image {p.image + 1} of {p.count} of job #{event.job}…")

    def _on_preview(self, event) -> None:
        p: Preview = event.data
        image = QImage(p.rgb, p.width, p.height, 3 * p.width, QImage.Format_RGB888)
        self.view.show_pixmap(QPixmap.fromImage(image.copy()))

    def _on_image(self, event) -> None:
        r = event.data
        if not isinstance(r, ImageSaved):  # a backend measurement's choice
            return
        pixmap = QPixmap(r.path)
        if not pixmap.isNull():
            self.view.show_pixmap(pixmap)
        s = r.settings
        text = (f"{s['width']}x{s['height']} · seed {s['seed']} · {s['solver']} {s['steps']} steps · guidance "
                f"{s['guidance']} · {r.evaluations} transformer passes\n{Path(r.path).name}")
        self.parameters.setText(text)
        self._last_image = (pixmap, text)  # what a cancel goes back to

    def _on_finished(self, job_id: int, outcome: str, message: str) -> None:
        if outcome == "error":
            self.say(message, error=True)
        if outcome != "done" and job_id == self._running_job:  # no half-drawn preview left on screen
            self._running_job = None
            if self._last_image is not None and not self._last_image[0].isNull():
                pixmap, text = self._last_image
                self.view.show_pixmap(pixmap)
                self.parameters.setText(f"{text}\nJob #{job_id} {outcome}: the images finished before are kept.")
            else:
                self.view.clear_image()
                self.parameters.setText(f"Job #{job_id} {outcome} before its first image was finished.")
        self.progress.setFormat(f"Job #{job_id} done" if outcome == "done" else f"Job #{job_id} {outcome}")
        if outcome == "done":
            self.progress.setValue(self.progress.maximum())

    # ---- drop an image to load its settings ---------------------------------------------------------

    def dragEnterEvent(self, event):  # noqa: N802
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event):  # noqa: N802
        for url in event.mimeData().urls():
            self.load_settings_from(url.toLocalFile())
            break

    def say(self, text: str, error: bool = False) -> None:
        """A line under Generate: red for a problem, plain for news."""
        self.message.setText(text)
        self.message.setStyleSheet("color: #c0392b;" if error else "")

    def load_settings_from(self, path: str) -> None:
        """Read an image's settings off the GUI thread (a large or hostile file must not freeze the window)."""
        self.say(f"Reading the settings of {Path(path).name}…")
        run_in_background(lambda: read_settings(path), lambda settings: self._settings_read(path, settings),
                          lambda exc: self.say(str(exc) if isinstance(exc, LuminaError) else
                                               f"Could not read {path}: {type(exc).__name__}: {exc}", error=True))

    def _settings_read(self, path: str, settings: dict) -> None:
        self.apply_values(settings)
        if isinstance(settings.get("seed"), int):
            self.use_seed(settings["seed"])
        note = f"; {settings['note']}" if settings.get("note") else ""
        self.say(f"Loaded the settings of {Path(path).name} ({settings['source']}){note}.")
        self.settings_loaded.emit(path)


class SeedEdit(QLineEdit):
    """A seed of the full range (0 … 2^64 − 1): a spin box stops at 2^31 − 1."""

    def __init__(self):
        super().__init__("0")
        self.setValidator(QRegularExpressionValidator(QRegularExpression("[0-9]{1,20}")))
        self.setToolTip(f"0 to {MAX_SEED:,}")

    def value(self) -> int:
        return min(int(self.text() or 0), MAX_SEED)

    def setValue(self, seed: int) -> None:  # noqa: N802 - the spin box's name, so both read alike
        self.setText(str(min(max(int(seed), 0), MAX_SEED)))

    @staticmethod
    def maximum() -> int:
        return MAX_SEED


class ShiftBox(QDoubleSpinBox):
    """The time shift; its lowest value reads "model default" (None: the model's scheduler config)."""

    def __init__(self):
        super().__init__(minimum=0, maximum=50, singleStep=0.5, decimals=2)
        self.setSpecialValueText("model default")

    def shift(self) -> float | None:
        return None if self.value() == self.minimum() else self.value()

    def set_shift(self, value: float | None) -> None:
        self.setValue(self.minimum() if value is None else float(value))


def _read(widget):
    if isinstance(widget, ShiftBox):
        return widget.shift()
    if isinstance(widget, QPlainTextEdit):
        return widget.toPlainText()
    if isinstance(widget, QComboBox):
        return widget.currentText()
    return widget.value()


def _write(widget, value) -> None:
    if isinstance(widget, ShiftBox):
        widget.set_shift(value)
    elif isinstance(widget, QPlainTextEdit):
        widget.setPlainText(str(value))
    elif isinstance(widget, QComboBox):
        if widget.findText(str(value)) < 0:  # a custom system prompt, a cache threshold beyond the presets
            widget.addItem(str(value))
        widget.setCurrentText(str(value))
    elif isinstance(widget, QSpinBox):
        widget.setValue(int(value))
    else:
        widget.setValue(value)
