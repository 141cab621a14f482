"""The Train tab: the runs list, a monitor of the selected run, and the wizard that starts a new one.

Everything here reads the run folder (status.json, events.jsonl from a saved offset, samples/, train.log) and
writes only flag files, so a run started here survives the app, and a run whose processes are gone shows as
interrupted with Resume. Training itself runs as `lumina-studio train` in its own process group.
"""

from __future__ import annotations

import shlex
import shutil
import time
from pathlib import Path

from PySide6.QtCore import QSize, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QIcon
from PySide6.QtWidgets import (
    QAbstractItemView, QApplication, QCheckBox, QComboBox, QDialog, QDialogButtonBox, QHBoxLayout, QHeaderView,
    QLabel, QListWidget, QListWidgetItem, QPlainTextEdit, QPushButton, QSplitter, QTableWidget, QTabWidget,
    QTextBrowser, QTableWidgetItem, QVBoxLayout, QWidget,
)

from core.storage import runs_dir

from . import plain_text
from .background import BackgroundTask, run_in_background
from .image_loader import ImageLoader, TrueColourThumbnails
from .image_view import ImageView
from .loss_plot import SERIES, LossPlot, PlotPoints
from .plain_text import escape, plain_label, tooltip
from .settings_details import details_html
from .train_alignment import AlignmentMeter, describe, on_scene_world
from .train_checkpoints import CheckpointTable
from .train_compare import CompareDialog
from .train_export import ExportDialog
from .train_runs import EventTail, RunFolder, can_resume, kill, resume, scan_runs, summarise, tail
from trainer.events import (Checkpoint, CheckpointDamaged, Failed, Finished, Resumed, Samples, StageStart, Step,
                            Stopped, TrainingEvent, Validation, parse)

REFRESH_MS = 1000
KILL_AFTER_S = 30  # Kill is offered once a stop has had this long to save and exit
CATCH_UP_BYTES = 256 * 1024  # a longer log is first read off the GUI thread
COLUMNS = ("Run", "State", "Step", "Last loss", "Started", "Duration")  # the stage: the Step cell's tooltip
SAMPLE_SIZE = 128
ENLARGED = 1024  # a sample clicked to enlarge
ACTIVE = ("starting", "preparing", "running", "stopping")  # "starting": the launcher still checks the config


def duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def stage_progress(stages: list[tuple[str, int]], stage: str, step: int) -> str:
    """'stage high (2 of 2), step 50/100' from the stages' (name, steps) and the overall step."""
    names = [name for name, _ in stages]
    if stage not in names:
        return f"stage {stage}"
    index = names.index(stage)
    start = sum(steps for _, steps in stages[:index])
    steps = stages[index][1]
    text = f"stage {stage} ({index + 1} of {len(stages)})"
    return f"{text}, step {min(max(0, step - start), steps)}/{steps}" if steps > 0 else text


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class TrainPanel(QWidget):
    status = Signal(str)
    use_model = Signal(str)  # a registered model's name: switch Generate to it

    def __init__(self, parent=None):
        super().__init__(parent)
        self.run: RunFolder | None = None
        self.tail: EventTail | None = None
        self.catch_up = BackgroundTask(self)  # a long log read off the GUI thread, for the run shown
        self.loader = ImageLoader(self)
        self.alignment = AlignmentMeter(parent=self)
        self.alignment.updated.connect(
            lambda folder: self.run and str(self.run.path) == folder and self._show_alignment())
        self.alignment.failed.connect(self.status.emit)
        self.alignment.progress.connect(self._alignment_progress)
        self._started: dict[str, object] = {}  # run folder -> the launcher process this app started
        self._build()
        self._timer = QTimer(self)
        self._timer.setInterval(REFRESH_MS)
        self._timer.timeout.connect(self.refresh_monitor)
        self._runs_timer = QTimer(self)
        self._runs_timer.setInterval(5 * REFRESH_MS)
        self._runs_timer.timeout.connect(self.refresh_runs)
        self._active: set[str] = set()  # runs seen training: their end is announced, whichever tab is shown
        self._watch_timer = QTimer(self, interval=5 * REFRESH_MS, timeout=self.announce_ended)
        self._watch_timer.start()
        self._shown_once = False

    # ---- building -------------------------------------------------------------------------------------

    def _build(self) -> None:
        self.new_button = QPushButton("New run…")
        self.new_button.setToolTip("A wizard: datasets, base model, stages, hardware, samples; then launch")
        self.clone_button = QPushButton("Clone…")
        self.clone_button.setToolTip("A new run from the selected run's settings")
        self.delete_button = QPushButton("Delete…")
        self.runs = QTableWidget(0, len(COLUMNS))
        self.runs.setHorizontalHeaderLabels(COLUMNS)
        self.runs.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.runs.setSelectionMode(QAbstractItemView.SingleSelection)
        self.runs.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.runs.verticalHeader().setVisible(False)
        header = self.runs.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeToContents)  # the run's name whole; scroll for the rest
        header.setStretchLastSection(True)
        self.runs.setWordWrap(False)
        self.runs.itemSelectionChanged.connect(self._selected)
        list_buttons = QHBoxLayout()
        for button in (self.new_button, self.clone_button, self.delete_button):
            list_buttons.addWidget(button)
        list_buttons.addStretch(1)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addLayout(list_buttons)
        left_layout.addWidget(self.runs, 1)

        self.headline = QLabel("Select a run, or start one with New run…")
        self.headline.setWordWrap(True)
        self.headline.setTextFormat(Qt.RichText)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Save a checkpoint and stop (the run can be resumed)")
        self.kill_button = QPushButton("Kill")
        self.kill_button.setToolTip(f"For a run that Stop did not end within {KILL_AFTER_S} s: end its processes now "
                                    "(its newest complete checkpoint stays)")
        self.resume_button = QPushButton("Resume")
        self.sample_button = QPushButton("Sample now")
        self.sample_button.setToolTip("Sample images at the next step")
        self.save_button = QPushButton("Save now")
        self.save_button.setToolTip("Save a checkpoint at the next step")
        self.open_button = QPushButton("Open run folder")
        self.tensorboard_button = QPushButton("TensorBoard command")
        self.align_button = QPushButton("Measure alignment")
        self.align_button.setToolTip("Scene-world runs: how often each checkpoint draws the prompt's shapes, colours, "
                                     "places and relations (the base model measured too, for comparison)")
        self.align_label = plain_label()
        self.align_label.setWordWrap(True)
        self.align_progress = ""  # what the meter measures now: model i of n, prompts done, time left
        self.align_stop = QPushButton("Stop measuring")
        self.align_stop.setToolTip("Stop measuring alignment (the scores measured so far are kept)")
        self.use_button = QPushButton("Use in Generate")
        self.use_button.setToolTip("Register the chosen checkpoint's model (the newest when none is chosen) as "
                                   "\"RUN step N\" and switch Generate to it")
        controls = QVBoxLayout()  # two rows: one would make the window 1,250 px wide at least
        for row_buttons in ((self.stop_button, self.kill_button, self.resume_button, self.sample_button,
                             self.save_button),
                            (self.align_button, self.open_button, self.tensorboard_button)):
            row = QHBoxLayout()
            for button in row_buttons:
                row.addWidget(button)
            row.addStretch(1)
            controls.addLayout(row)
        self.plot = LossPlot()
        self.series = QComboBox()
        for name, label in SERIES.items():
            self.series.addItem(label, name)
        self.series.currentIndexChanged.connect(lambda _: self.plot.set_series(self.series.currentData()))
        self.log_scale = QCheckBox("Log scale")
        self.log_scale.toggled.connect(self.plot.set_log_scale)
        self.compare = QComboBox()  # another run's loss over this one's: the same recipe in another memory mode
        self.compare.setToolTip("Draw another run's smoothed loss, dashed, over this one's")
        self.compare.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.compare.setMinimumContentsLength(12)
        self.compare.activated.connect(lambda _: self._compare(self.compare.currentData()))
        plot_row = QHBoxLayout()
        plot_row.addWidget(QLabel("Plot"))
        plot_row.addWidget(self.series)
        plot_row.addWidget(self.log_scale)
        plot_row.addWidget(QLabel("Compare with"))
        plot_row.addWidget(self.compare, 1)
        plot_row.addStretch(1)
        self.samples = QListWidget()
        self.samples.setViewMode(QListWidget.IconMode)
        self.samples.setIconSize(QSize(SAMPLE_SIZE, SAMPLE_SIZE))
        self.samples.setItemDelegate(TrueColourThumbnails(self.samples))
        self.samples.setFlow(QListWidget.LeftToRight)
        self.samples.setWrapping(False)
        self.samples.setFixedHeight(SAMPLE_SIZE + 48)
        self.samples.itemActivated.connect(self._enlarge_sample)
        self.samples.itemClicked.connect(self._enlarge_sample)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(2000)
        self.checkpoint_table = CheckpointTable()
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip("Write the chosen checkpoint for ComfyUI, the authors' code or diffusers")
        self.export_button.clicked.connect(self.export_checkpoint)
        self.compare_button = QPushButton("Compare…")
        self.compare_button.setToolTip("The sample prompts drawn by the base model and every checkpoint with the "
                                       "same seeds, side by side, with each one's validation loss")
        self.compare_button.clicked.connect(self.compare_checkpoints)
        checkpoint_buttons = QHBoxLayout()
        checkpoint_buttons.addWidget(self.use_button)
        checkpoint_buttons.addWidget(self.compare_button)
        checkpoint_buttons.addWidget(self.export_button)
        checkpoint_buttons.addStretch(1)
        checkpoints = QWidget()
        checkpoints_layout = QVBoxLayout(checkpoints)
        checkpoints_layout.setContentsMargins(0, 0, 0, 0)
        checkpoints_layout.addWidget(self.checkpoint_table, 1)
        checkpoints_layout.addLayout(checkpoint_buttons)
        for shrinking in (self.log, self.checkpoint_table):  # a few lines at least: the window fits 700 px
            shrinking.setMinimumHeight(48)
        self.details = QTabWidget()  # the events and the checkpoints share the bottom
        self.details.addTab(self.log, "Events")
        self.details.addTab(checkpoints, "Checkpoints")
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(self.headline)
        right_layout.addLayout(controls)
        right_layout.addLayout(plot_row)
        right_layout.addWidget(self.plot, 2)
        align_row = QHBoxLayout()
        align_row.addWidget(self.align_label, 1)
        align_row.addWidget(self.align_stop, 0, Qt.AlignTop)
        right_layout.addLayout(align_row)
        right_layout.addWidget(QLabel("Samples (click to enlarge)"))
        right_layout.addWidget(self.samples)
        right_layout.addWidget(self.details, 1)
        self.splitter = QSplitter(Qt.Horizontal)
        self.splitter.addWidget(left)
        self.splitter.addWidget(right)
        self.splitter.setSizes([620, 640])  # at 1280 px the list shows its columns; the splitter moves
        layout = QVBoxLayout(self)
        layout.addWidget(self.splitter)

        self.new_button.clicked.connect(lambda: self.new_run())
        self.clone_button.clicked.connect(self.clone_run)
        self.delete_button.clicked.connect(self.delete_run)
        self.stop_button.clicked.connect(self.stop_run)
        self.kill_button.clicked.connect(self.kill_run)
        self.resume_button.clicked.connect(self.resume_run)
        self.sample_button.clicked.connect(lambda: self._ask("sample_flag", "sample images"))
        self.save_button.clicked.connect(lambda: self._ask("save_flag", "save a checkpoint"))
        self.open_button.clicked.connect(self.open_folder)
        self.tensorboard_button.clicked.connect(self.tensorboard)
        self.use_button.clicked.connect(self.use_checkpoint)
        self.align_button.clicked.connect(self.measure_alignment)
        self.align_stop.clicked.connect(self.stop_alignment)
        self.loader.loaded.connect(self._sample_loaded)
        self._set_controls(None)

    def showEvent(self, event):  # noqa: N802 (Qt naming)
        super().showEvent(event)
        self._timer.start()
        self._runs_timer.start()
        if not self._shown_once:
            self._shown_once = True
            self.refresh_runs()

    def hideEvent(self, event):  # noqa: N802 (Qt naming)
        super().hideEvent(event)
        self._timer.stop()
        self._runs_timer.stop()

    # ---- the runs list ------------------------------------------------------------------------------

    def refresh_runs(self) -> None:
        selected = self.run.path if self.run else None
        found = scan_runs(runs_dir(), {folder for folder in self._started if self._launcher_running(folder)})
        self._active |= {str(summary.path) for summary in found if summary.state in ACTIVE}
        self.runs.blockSignals(True)
        header = self.runs.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.Fixed)  # sizing to contents on every setItem is quadratic
        self.runs.setRowCount(len(found))
        for row, summary in enumerate(found):
            step = f"{summary.step}/{summary.total}" if summary.total else str(summary.step or "")
            loss = f"{summary.loss:.4f}" if isinstance(summary.loss, (int, float)) else ""
            started = time.strftime("%Y-%m-%d %H:%M", time.localtime(summary.started)) if summary.started else ""
            state = f"{summary.state} (damaged files)" if summary.problems else summary.state
            for column, text in enumerate((summary.name, state, step, loss, started, duration(summary.duration))):
                item = QTableWidgetItem(text)
                item.setData(Qt.UserRole, str(summary.path))
                if summary.problems:
                    item.setToolTip(tooltip("\n".join(summary.problems)))
                elif column == 2 and summary.stage:
                    item.setToolTip(tooltip(f"stage {summary.stage}"))  # a name from the run's files
                self.runs.setItem(row, column, item)
            if selected is not None and summary.path == selected:
                self.runs.selectRow(row)
        header.setSectionResizeMode(QHeaderView.ResizeToContents)
        self.runs.blockSignals(False)
        compared = self.compare.currentData()
        self.compare.clear()
        self.compare.addItem("no other run", None)
        for summary in found:
            self.compare.addItem(summary.name, str(summary.path))
        self.compare.setCurrentIndex(max(0, self.compare.findData(compared)))

    def _compare(self, folder: str | None) -> None:
        """Read the chosen run's losses off the GUI thread and draw them over the selected run's."""
        if folder is None:
            self.plot.set_comparison(None)
            return

        def work() -> PlotPoints:
            points = PlotPoints()
            for event in map(parse, EventTail(RunFolder(Path(folder)).events).read()):
                if isinstance(event, Step):
                    points.add(event)
            return points

        def done(points: PlotPoints) -> None:
            if self.compare.currentData() == folder:  # not another choice meanwhile
                self.plot.set_comparison(points, Path(folder).name)

        run_in_background(work, done, lambda exc: self.status.emit(f"Could not read {folder}: {exc}"))

    def announce_ended(self) -> None:
        """A run seen training that has ended is announced in the status bar (and the window asks for
        attention), so nobody has to watch the Train tab to know."""
        for folder in list(self._active):
            state = summarise(Path(folder), self._launcher_running(folder)).state
            if state in ACTIVE:
                continue
            self._active.discard(folder)
            name = Path(folder).name
            self.status.emit(f"Training run {name} finished: Use in Generate (Train tab, Checkpoints) to generate "
                             "with it." if state == "finished" else f"Training run {name} is {state}: see the Train tab.")
            QApplication.alert(self.window())
            if self.isVisible():
                self.refresh_runs()

    def _launcher_running(self, folder: str) -> bool:
        """Whether the `lumina-studio train` this app started for `folder` still runs (checking its config)."""
        started = self._started.get(folder)
        return started is not None and started.poll() is None

    def select_run(self, folder: Path) -> None:
        self.refresh_runs()
        for row in range(self.runs.rowCount()):
            if Path(self.runs.item(row, 0).data(Qt.UserRole)) == folder:
                self.runs.selectRow(row)
                break
        if self.run is None or self.run.path != folder:  # the row was selected already (another run was in it)
            self.show_run(folder)

    def _selected(self) -> None:
        items = self.runs.selectedItems()
        self.show_run(Path(items[0].data(Qt.UserRole)) if items else None)

    # ---- the monitor ----------------------------------------------------------------------------------

    def show_run(self, folder: Path | None) -> None:
        self.run = RunFolder(folder) if folder else None
        self.tail = EventTail(self.run.events) if self.run else None
        self.plot.clear()
        self.samples.clear()
        self.log.clear()
        self._sample_files: set[str] = set()
        self._last_step: Step | None = None
        self._stages = self._read_stages()
        self.catch_up.stop()
        self._show_alignment()
        if self.run is not None and file_size(self.run.events) > CATCH_UP_BYTES:
            self._catch_up()
        self.refresh_monitor()

    def _catch_up(self) -> None:
        """Read a long log and gather its plot points off the GUI thread; the monitor follows on from there."""
        tail, points = self.tail, PlotPoints()

        def work(should_stop):
            others, last = [], None
            for event in map(parse, tail.read()):
                if isinstance(event, Step):
                    points.add(event)
                    last = event
                elif event is not None:  # a newer trainer's kinds are left out
                    others.append(event)
            return others, last

        def done(result):
            others, last = result
            self.plot.set_points(points)
            self._last_step = last
            for record in others:
                self._event(record)
            self.refresh_monitor()

        self.catch_up.start(work, done, lambda exc: self.status.emit(f"Could not read {tail.path}: {exc}"))

    def refresh_monitor(self) -> None:
        if self.run is None:
            self._set_controls(None)
            return
        if self.catch_up.running:
            self._describe()
            return
        for event in map(parse, self.tail.read()):
            if event is not None:  # a newer trainer's kinds are left out
                self._event(event)
        self.plot.update()
        self._describe()

    def _event(self, event: TrainingEvent) -> None:
        if isinstance(event, Step):
            self.plot.add_step(event)
            self._last_step = event
        elif isinstance(event, StageStart):
            self.plot.add_stage(event.step, event.stage)
            self._line(f"stage {event.stage} starts at step {event.step}: {event.resolution} px, batch "
                       f"{event.batch_size}, {event.items} images")
        elif isinstance(event, Samples):
            for name in event.files:
                self._add_sample(name, event.step)
            self._line(f"samples at step {event.step}")
        elif isinstance(event, Validation):
            self.plot.add_validation(event)
            self._line(f"validation loss {event.loss:.5f} at step {event.step} ({event.images} held-out images "
                       f"at {event.resolution} px, {event.seconds:.1f} s)")
        elif isinstance(event, Checkpoint):
            self._line(f"checkpoint at step {event.step} {event.path}")
            self.checkpoint_table.show_checkpoints(self.run, self.alignment.scores(self.run))
        elif isinstance(event, (Resumed, CheckpointDamaged)):
            self._line(f"{'resumed from' if isinstance(event, Resumed) else 'damaged:'} {event.checkpoint}"
                       + (f" at step {event.step}" if isinstance(event, Resumed) else f" ({event.message})"))
        elif isinstance(event, (Stopped, Finished)):
            self._line(f"{'stopped' if isinstance(event, Stopped) else 'finished'} at step {event.step}")
        elif isinstance(event, Failed):
            self._line(f"failed: {event.message}")

    def _line(self, text: str) -> None:
        self.log.appendPlainText(text)

    def _add_sample(self, name: str, step: int) -> None:
        if name in self._sample_files:
            return
        self._sample_files.add(name)
        path = self.run.path / name
        item = QListWidgetItem(f"step {step}")
        item.setData(Qt.UserRole, str(path))
        item.setToolTip(tooltip(path))  # a run's name is the person's: shown as written
        pixmap = self.loader.get(str(path), SAMPLE_SIZE)
        if pixmap is not None:
            item.setIcon(QIcon(pixmap))
        self.samples.addItem(item)
        self.samples.scrollToBottom()

    def _sample_loaded(self, path: str, size: int) -> None:
        for row in range(self.samples.count()):
            item = self.samples.item(row)
            if item.data(Qt.UserRole) == path and size == SAMPLE_SIZE:
                item.setIcon(QIcon(self.loader.get(path, SAMPLE_SIZE)))

    def _enlarge_sample(self, item: QListWidgetItem) -> None:
        self.enlarge(Path(item.data(Qt.UserRole)))

    def enlarge(self, path: Path) -> None:
        """An image large, with its settings in the Gallery's details format."""
        from core.metadata import MetadataError, read_settings

        dialog = QDialog(self)
        dialog.setWindowTitle(path.name)
        view = ImageView("")
        view.setMinimumSize(420, 420)

        def show(loaded: str = str(path), size: int = ENLARGED) -> None:
            pixmap = self.loader.get(str(path), ENLARGED) if loaded == str(path) and size == ENLARGED else None
            if pixmap is not None:
                view.show_pixmap(pixmap)

        show()  # at once when it is decoded already; else when the loader has it (the first click)
        self.loader.loaded.connect(show)
        dialog.finished.connect(lambda _: self.loader.loaded.disconnect(show))
        info = QTextBrowser()  # the Gallery's details view: labelled settings, every value escaped
        try:
            settings = read_settings(path)
            info.setHtml(details_html(settings, [("Model", settings.get("model")), ("File", path.name)]))
        except (MetadataError, OSError) as exc:
            info.setPlainText(str(exc))
        buttons = QDialogButtonBox(QDialogButtonBox.Close)
        buttons.rejected.connect(dialog.reject)
        layout = QVBoxLayout(dialog)
        layout.addWidget(view, 1)
        layout.addWidget(info)
        layout.addWidget(buttons)
        dialog.resize(520, 600)
        dialog.show()

    def _describe(self) -> None:
        summary = summarise(self.run.path, self._launcher_running(str(self.run.path)))
        status = self.run.status()
        state = summary.state
        parts = [f"<b>{escape(self.run.path.name)}</b> · {state}"]
        step = self._last_step
        if summary.total:
            parts.append(f"step {summary.step}/{summary.total} ({summary.step / summary.total:.0%})")
        if summary.stage:
            self._stages = self._stages or self._read_stages()  # a run just launched writes its config soon
            parts.append(escape(stage_progress(self._stages, summary.stage, summary.step)))
        if self.catch_up.running:
            parts.append("reading its log…")
        if step and state == "running":
            if step.samples_per_s:
                parts.append(f"{step.samples_per_s:.1f} samples/s")
            parts.append(f"{duration(step.eta_s)} left")
        message = status.get("message") if state in ("failed", "stopped", "interrupted") else ""
        text = " · ".join(parts)
        if state == "interrupted":
            text += "<br>Its processes are gone (killed, crashed or the machine restarted). Resume continues " \
                    "from the newest complete checkpoint."
        if message:
            text += f"<br>{escape(message)}"
        if summary.problems:
            text += "<br>Damaged run files (their values are ignored): " + escape("; ".join(summary.problems))
        asked = self._stop_asked_s()
        if asked is not None and state in ACTIVE:
            text += f"<br>Stop asked {duration(asked)} ago: the run saves a checkpoint and exits." + \
                (" If it does not, Kill ends it." if asked >= KILL_AFTER_S else "")
        if state == "failed":
            last = tail(self.run.log_file, 12) or tail(self.run.path / "launcher.log", 12)
            if last and self.log.toPlainText().find("--- last lines") < 0:
                self._line(f"--- last lines of {self.run.log_file.name} ---\n{last}")
        self.headline.setText(text)
        self._set_controls(state)

    def _read_stages(self) -> list[tuple[str, int]]:
        """The run's stages as (name, steps), from its config."""
        if self.run is None:
            return []
        try:
            import tomllib

            stages = tomllib.loads(self.run.config.read_text(encoding="utf-8")).get("stages", [])
            return [(str(stage.get("name", "")), int(stage.get("steps", 0) or 0)) for stage in stages]
        except (OSError, ValueError, TypeError, AttributeError):
            return []

    def _stop_asked_s(self) -> float | None:
        """Seconds since Stop was asked (the stop file's age); None when it was not."""
        try:
            return max(0.0, time.time() - self.run.stop_flag.stat().st_mtime)
        except (OSError, AttributeError):
            return None

    def _set_controls(self, state: str | None) -> None:
        active = state in ACTIVE
        has_checkpoint = self.run is not None and self.run.latest_checkpoint() is not None
        self.stop_button.setEnabled(active and state != "stopping")
        for button in (self.sample_button, self.save_button):
            button.setEnabled(state == "running")
        asked = self._stop_asked_s() if self.run is not None else None
        self.kill_button.setEnabled(active and asked is not None and asked >= KILL_AFTER_S)  # it asks first
        self.resume_button.setEnabled(self.run is not None and can_resume(self.run, state))
        for button in (self.open_button, self.tensorboard_button, self.clone_button, self.delete_button):
            button.setEnabled(self.run is not None)
        self.delete_button.setEnabled(self.run is not None and not active)
        self.use_button.setEnabled(has_checkpoint)
        self.export_button.setEnabled(has_checkpoint)
        self.compare_button.setEnabled(has_checkpoint)
        self.align_button.setVisible(self.run is not None and on_scene_world(self.run))
        self.align_button.setEnabled(has_checkpoint and not self.alignment.busy)

    # ---- controls -------------------------------------------------------------------------------------

    def stop_run(self) -> None:
        if self.run is not None:
            self.run.request_stop()
            self.status.emit(f"Asked {self.run.path.name} to save a checkpoint and stop.")

    def measure_alignment(self) -> None:
        if self.run is not None:
            queued = self.alignment.measure(self.run)
            self.status.emit(f"Measuring prompt alignment of {queued} model(s) in the background…" if queued
                             else "Every checkpoint is measured already.")
            self._show_alignment()

    def _alignment_progress(self, text: str) -> None:
        self.align_progress = text
        self._show_alignment()

    def stop_alignment(self) -> None:
        self.alignment.stop()
        self.status.emit("Stopped measuring prompt alignment; the scores measured so far are kept.")
        self._show_alignment()
        self._set_controls(self.run.state() if self.run else None)

    def _show_alignment(self) -> None:
        scores = self.alignment.scores(self.run) if self.run else {}
        busy = self.alignment.busy  # while any model is measured or waits to be
        self.align_label.setVisible(bool(scores) or busy)
        self.align_stop.setVisible(busy)
        self.align_label.setText("Prompt alignment on held-out scenes:\n" + describe(scores)
                                 + (f"\n({self.align_progress or 'measuring…'})" if busy else ""))
        self.checkpoint_table.show_checkpoints(self.run, scores)

    def _ask(self, flag: str, what: str) -> None:
        if self.run is not None:
            getattr(self.run, flag).touch()  # the trainer does it at its next step and removes the flag
            self.status.emit(f"Asked {self.run.path.name} to {what} at its next step.")

    def kill_run(self) -> None:
        if self.run is None:
            return
        if plain_text.ask(self, "Kill the run", f"End {self.run.path.name}'s processes now? Its newest complete "
                          "checkpoint stays and it can be resumed from there."):
            kill(self.run.path, self._started.get(str(self.run.path)))
            self.status.emit(f"Killed {self.run.path.name}.")

    def resume_run(self) -> None:
        if self.run is not None:
            self._started[str(self.run.path)] = resume(self.run.path)
            self.status.emit(f"Resuming {self.run.path.name}…")

    def open_folder(self) -> None:
        if self.run is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.run.path)))

    def tensorboard(self) -> None:
        command = f"tensorboard --logdir {shlex.quote(str(self.run.tensorboard))}"
        QApplication.clipboard().setText(command)
        self.status.emit(f"Copied: {command}")

    def use_checkpoint(self) -> None:
        from core.errors import LuminaError
        from core.models.registry import add_model

        checkpoint = self.checkpoint_table.chosen() if self.run else None
        if checkpoint is None:
            return
        try:
            entry = add_model(checkpoint / "model")  # named "RUN step N"
        except LuminaError as exc:
            plain_text.message(self, "Use in Generate", str(exc))
            return
        self.use_model.emit(entry["name"])
        self.status.emit(f"Registered {entry['name']}; Generate uses it now.")

    def compare_checkpoints(self) -> CompareDialog | None:
        if self.run is None:
            return None
        dialog = CompareDialog(self.run, self.loader, self.enlarge, self)
        dialog.show()
        dialog.start()
        return dialog

    def export_checkpoint(self) -> ExportDialog | None:
        checkpoint = self.checkpoint_table.chosen() if self.run else None
        if checkpoint is None:
            return None
        dialog = ExportDialog(checkpoint, self)
        dialog.exported.connect(lambda out: self.status.emit(f"Exported {checkpoint.name} to {out}"))
        dialog.show()
        return dialog

    def delete_run(self) -> None:
        if self.run is None:
            return
        if not plain_text.ask(self, "Delete the run", f"Move {self.run.path.name} (its checkpoints, samples and "
                              "logs) to the trash folder of the runs folder?"):
            return
        trash = runs_dir() / ".trash"
        trash.mkdir(parents=True, exist_ok=True)
        shutil.move(str(self.run.path), str(trash / f"{self.run.path.name}-{int(time.time())}"))
        self.show_run(None)
        self.refresh_runs()

    def new_run(self, dataset: Path | None = None, template: Path | None = None) -> None:
        from .train_wizard import TrainWizard

        wizard = TrainWizard(dataset=dataset, template=template, parent=self)
        if wizard.exec() and wizard.launched is not None:
            folder, process = wizard.launched
            self._started[str(folder)] = process
            self.select_run(folder)

    def clone_run(self) -> None:
        if self.run is not None and self.run.config.is_file():
            self.new_run(template=self.run.config)

    def stop(self) -> None:
        self._watch_timer.stop()
        self.alignment.stop()
        self._timer.stop()
        self._runs_timer.stop()
        self.loader.stop()
