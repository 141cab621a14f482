"""The main window: Generate, Gallery, Caption and Train tabs, menus, shortcuts, settings that survive a restart."""

from __future__ import annotations

import platform
import signal

from PySide6 import __version__ as pyside_version
from PySide6.QtCore import QRectF, Qt, QTimer, QUrl, qVersion
from PySide6.QtGui import (
    QAction, QActionGroup, QColor, QDesktopServices, QKeySequence, QPainter, QPalette, QPen, QShortcut,
)
from PySide6.QtWidgets import (
    QApplication, QFileDialog, QMainWindow, QMessageBox, QProxyStyle, QStyle, QTabWidget, QVBoxLayout, QWidget,
)

from core import __version__
from core.errors import LuminaError
from core.library import Library
from core.logs import log_file, log_folder, setup_logging
from core.models.registry import available_models
from core.storage import data_dir, library_dir
from core.generation.messages import ImageSaved
from core.generation.service import SERVICE, GenerationOptions

from .background import run_in_background
from .backend_measurement import BackendMeasurement
from .caption_panel import SHORTCUTS as CAPTION_SHORTCUTS
from .caption_panel import CaptionPanel
from .gallery_panel import GalleryPanel
from .generate_panel import GeneratePanel
from .model_manager import ModelManager
from .plain_text import plain_label
from .settings import AppSettings
from .train_panel import TrainPanel
from .worker_client import WorkerClient

THEMES = ("system", "light", "dark")


class MainWindow(QMainWindow):
    def __init__(self, device: str = "auto", generation_service: str = SERVICE):
        """generation_service: the job worker's service path (tests give a scripted one that loads no model)."""
        super().__init__()
        self.setWindowTitle("Lumina Studio")
        self.device = device
        self._ask_before_quitting = True
        setup_logging()
        self.settings = AppSettings()
        self.client = WorkerClient(generation_service, "lumina-engine", self)
        self.measurement = BackendMeasurement(self.client, self)
        self.library, library_problem = self._open_library()

        self.banner = plain_label()  # the engine's state: loading, load errors, crashes
        self.banner.setWordWrap(True)
        self.banner.setMargin(6)
        self.notice = plain_label()  # the library's state, apart from the engine's so neither hides the other
        self.notice.setWordWrap(True)
        self.notice.setMargin(6)
        self.notice.setVisible(False)
        self.generate = GeneratePanel(self.client)
        self.gallery = GalleryPanel(self.library)
        self.caption = CaptionPanel(self.settings, device)
        self.train = TrainPanel()
        self.tabs = QTabWidget()
        self.tabs.addTab(self.generate, "Generate")
        self.tabs.addTab(self.gallery, "Gallery")
        self.tabs.addTab(self.caption, "Caption")
        self.tabs.addTab(self.train, "Train")
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.banner)
        layout.addWidget(self.notice)
        layout.addWidget(self.tabs, 1)
        self.setCentralWidget(central)
        self._build_menus()
        self._connect()
        self._restore()
        if library_problem:
            self.show_notice(library_problem, error=True)
        elif self.library.needs_rebuild:
            self._recover_library()
        self.start_engine()

    # ---- set-up -------------------------------------------------------------------------------------

    def _open_library(self):
        try:
            return Library(library_dir()), None
        except LuminaError as exc:
            return None, f"{exc} Images cannot be saved until this is fixed."

    def _build_menus(self) -> None:
        def action(menu, text, slot, shortcut=None):
            item = QAction(text, self)
            item.triggered.connect(slot)
            if shortcut:
                item.setShortcut(QKeySequence(shortcut))
            menu.addAction(item)
            return item

        file_menu = self.menuBar().addMenu("&File")
        file_menu.setToolTipsVisible(True)
        action(file_menu, "&Open image to load its settings…", self.open_image, QKeySequence.Open)
        action(file_menu, "&Models…", self.manage_models)
        action(file_menu, "&Export selected images…", self.gallery.export_dialog, "Ctrl+E")
        action(file_menu, "Open a folder to &caption…", lambda: (self.tabs.setCurrentWidget(self.caption),
                                                                 self.caption.choose_folder()))
        action(file_menu, "&Rebuild library from files", self.rebuild_library)
        file_menu.addSeparator()
        self.store_model_path = action(file_menu, "Store the model's &path in new images", self._store_model_path)
        self.store_model_path.setCheckable(True)
        self.store_model_path.setToolTip("Off: new images name their model by name and hash only, so an image you "
                                         "share does not show your folders")
        self.store_model_path.setChecked(self.settings.store_model_path)
        self._store_model_path(self.store_model_path.isChecked())
        file_menu.addSeparator()
        action(file_menu, "&Quit", self.close, QKeySequence.Quit)
        edit_menu = self.menuBar().addMenu("&Edit")
        action(edit_menu, "&Undo", self.undo, QKeySequence.Undo)
        action(edit_menu, "&Redo (captions)", self.caption.redo, QKeySequence("Ctrl+Shift+Z"))
        action(edit_menu, "&Delete selected images", self.gallery.delete_selected, QKeySequence.Delete)
        action(edit_menu, "Select &all images", self.gallery.select_all)
        action(edit_menu, "Empty &trash…", self.empty_trash)
        view_menu = self.menuBar().addMenu("&View")
        self.theme_actions = QActionGroup(self)  # exclusive: the current theme is ticked
        current = self.settings.theme
        for theme in THEMES:
            item = action(view_menu, f"{theme.capitalize()} theme", lambda checked=False, t=theme: self.apply_theme(t))
            item.setCheckable(True)
            item.setChecked(theme == current)
            self.theme_actions.addAction(item)
        caption_menu = self.menuBar().addMenu("&Caption")  # the Caption tab's keys, listed (they work in its tab)
        for keys, what in CAPTION_SHORTCUTS:
            item = caption_menu.addAction(f"{what[0].upper()}{what[1:]}\t{keys}")
            item.setEnabled(False)
        help_menu = self.menuBar().addMenu("&Help")
        action(help_menu, "Open &log folder", lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(str(log_folder()))))
        action(help_menu, "&About Lumina Studio", self.about)

        for keys in ("Ctrl+Return", "Ctrl+Enter"):  # in its tab only: the Caption tab's Ctrl+Return approves
            QShortcut(QKeySequence(keys), self.generate, self.generate.request_generation).setContext(
                Qt.WidgetWithChildrenShortcut)
        QShortcut(QKeySequence("Esc"), self, self.client.stop_current)
        QShortcut(QKeySequence.Find, self, self.focus_search)

    def _connect(self) -> None:
        self.generate.model_manager_requested.connect(self.manage_models)
        self.generate.model_changed.connect(lambda _: self.start_engine())
        self.generate.backend_changed.connect(lambda _: self.start_engine())
        self.gallery.use_settings.connect(self._use_settings)
        self.gallery.use_seed.connect(lambda seed: (self.generate.use_seed(seed), self.tabs.setCurrentWidget(self.generate)))
        self.gallery.status.connect(lambda text: self.statusBar().showMessage(text, 8000))
        self.caption.status.connect(lambda text: self.statusBar().showMessage(text, 8000))
        self.caption.train_requested.connect(self.train_on)
        self.train.status.connect(lambda text: self.statusBar().showMessage(text, 8000))
        self.train.use_model.connect(self.use_model)
        self.client.ready.connect(self._engine_ready)
        self.client.load_error.connect(
            lambda message: self.show_banner(f"The model could not be loaded: {message}{self._log_hint()}", True))
        self.client.crashed.connect(lambda message: self.show_banner(message + self._log_hint(), True))
        self.client.result.connect(self._result)
        self.measurement.measured.connect(self._backend_measured)
        self.measurement.switch.connect(self.start_engine)

    # ---- engine -------------------------------------------------------------------------------------

    def current_model(self) -> str | None:
        chosen = self.generate.model.currentData()
        if chosen:
            return chosen
        if self.settings.model:
            return self.settings.model
        models = available_models()
        return models[-1]["name"] if models else None

    def start_engine(self) -> None:
        model = self.current_model()
        self.generate.set_models(available_models(), model)
        if not model:
            self.client.stop()
            self.show_banner("No model yet. Add a Lumina-Image 2.0 diffusers folder or checkpoint with "
                             "File → Models… (or the Manage… button).", error=True)
            return
        self.settings.model = model
        self.caption.use_lumina_model(model)
        self.show_banner("")  # the loading state goes to the status bar: a banner would push the window down
        self.statusBar().showMessage(f"Loading {model}…")
        self.client.start(GenerationOptions(model=model, device=self.device, backend=self.generate.backend.currentText()))

    def _store_model_path(self, checked: bool) -> None:
        self.generate.store_model_path = checked
        self.settings.store_model_path = checked

    def _engine_ready(self, event: dict) -> None:
        run = event["run"]
        self.show_banner("")
        name = event["model"]["name"]
        if self.settings.size_for_model != name:  # a new model starts at its own size and sampling
            size = event.get("default_size", 1024)
            self.generate.apply_values({"width": size, "height": size, **event.get("sampling_defaults", {})})
            self.settings.size_for_model = name
        self.generate.ask_token_count()
        self.statusBar().showMessage(
            f"{event['model']['name']} ready · {run['backend']} ({run.get('provider') or run['device']}) · {run['dtype']}")

    def _result(self, event) -> None:
        if isinstance(event.data, ImageSaved):
            self.gallery.add_image(event.data.path)

    def _backend_measured(self, faster: str, switching: bool) -> None:
        name = {"torch": "PyTorch", "onnx": "ONNX Runtime"}.get(faster, faster)
        self.statusBar().showMessage(f"Backend auto: {name} measured faster here"
                                     + ("; switching to it" if switching else ""), 10_000)

    def _use_settings(self, settings: dict) -> None:
        self.generate.apply_values(settings)
        if isinstance(settings.get("seed"), int):
            self.generate.use_seed(settings["seed"])
        self.tabs.setCurrentWidget(self.generate)

    # ---- actions ------------------------------------------------------------------------------------

    def show_banner(self, text: str, error: bool = False) -> None:
        self.banner.setText(text)
        self.banner.setVisible(bool(text))
        self.banner.setStyleSheet("background: #fdecea; color: #611a15;" if error else "background: #e8f0fe; color: #174ea6;")

    @staticmethod
    def _log_hint() -> str:
        return f" Details are in the log: {log_file()} (Help → Open log folder)."

    def show_notice(self, text: str, error: bool = False) -> None:
        self.notice.setText(text)
        self.notice.setVisible(bool(text))
        self.notice.setStyleSheet("background: #fdecea; color: #611a15;" if error else "background: #e6f4ea; color: #137333;")

    def open_image(self) -> None:
        path = QFileDialog.getOpenFileName(self, "Load the settings of an image", str(library_dir()),
                                           "PNG images (*.png)")[0]
        if path:
            self.tabs.setCurrentWidget(self.generate)
            self.generate.load_settings_from(path)

    def train_on(self, folder) -> None:
        """The Caption tab's "Train on this dataset": the wizard, with the folder filled in."""
        self.tabs.setCurrentWidget(self.train)
        self.train.new_run(dataset=folder)

    def use_model(self, name: str) -> None:
        """A checkpoint registered in the Train tab: Generate switches to it."""
        self.generate.set_models(available_models(), name)
        self.start_engine()
        self.tabs.setCurrentWidget(self.generate)

    def undo(self) -> None:
        """Edit → Undo: the Caption tab's last change there, else the Gallery's last delete."""
        if self.tabs.currentWidget() is self.caption:
            self.caption.undo()
        else:
            self.gallery.undo_delete()

    def focus_search(self) -> None:
        self.tabs.setCurrentWidget(self.gallery)
        self.gallery.search.setFocus()
        self.gallery.search.selectAll()

    def manage_models(self) -> None:
        dialog = ModelManager(self)
        dialog.exec()
        if dialog.added:
            self.settings.model = dialog.added
            self.generate.set_models(available_models(), dialog.added)
            self.start_engine()
        else:
            self.generate.set_models(available_models(), self.current_model())

    def _recover_library(self) -> None:
        """A damaged index was moved aside (or an old one must be redone): re-index from the PNGs now."""
        if self.library.recovered:
            self.show_notice(f"The library index was damaged. It was kept as {self.library.recovered} and is "
                             "being rebuilt from the image files; favourites and the trash are kept.", error=True)
        else:
            self.show_notice("The library index is being rebuilt from the image files (a new index layout).")
        self.rebuild_library(report=self._library_recovered)

    def _library_recovered(self, result) -> None:
        indexed, skipped = result
        self.library.needs_rebuild = False  # rebuilt through another connection to the same index
        where = f" The damaged index is kept as {self.library.recovered}." if self.library.recovered else ""
        self.show_notice(f"The library was rebuilt from its files: {indexed} image(s), {len(skipped)} file(s) "
                         f"skipped.{where}", error=False)
        self.gallery.refresh()

    def rebuild_library(self, report=None) -> None:
        """Re-index on a background thread (reading every PNG takes a while); report when done."""
        if self.library is None:
            return
        self.statusBar().showMessage("Rebuilding the library from its files…")
        folder = self.library.folder

        def work():
            library = Library(folder)  # SQLite connections belong to one thread
            try:
                return library.rebuild()
            finally:
                library.close()

        def failed(exc):
            self.statusBar().clearMessage()
            self.show_notice(f"The library could not be rebuilt: {exc}", error=True)

        run_in_background(work, report or self._library_rebuilt, failed)

    def _library_rebuilt(self, result) -> None:
        indexed, skipped = result
        self.gallery.refresh()
        self.statusBar().clearMessage()
        text = f"Indexed {indexed} image(s)."
        if skipped:
            text += "\n\nSkipped:\n" + "\n".join(f"{name}: {why}" for name, why in skipped[:20])
        QMessageBox.information(self, "Library rebuilt", text)

    def empty_trash(self) -> None:
        if self.library is None:
            return
        count = self.library.count(trashed=True)
        answer = QMessageBox.question(self, "Empty trash", f"Delete {count} image(s) in the trash for good?")
        if answer == QMessageBox.Yes:
            self.gallery.empty_trash()

    def about(self) -> None:
        info = self.client.info
        engine = "not loaded"
        if info:
            run = info["run"]
            engine = f"{run['backend']} on {run.get('provider') or run['device']} ({run['dtype']}), model {info['model']['name']}"
        QMessageBox.about(self, "About Lumina Studio", (
            f"<b>Lumina Studio {__version__}</b><br>Lumina-Image 2.0 on your own machine.<br><br>"
            f"Engine: {engine}<br>Qt {qVersion()}, PySide6 {pyside_version}, Python {platform.python_version()}<br>"
            f"{library_versions()}<br>"
            f"Data folder: {data_dir()}"))

    def apply_theme(self, theme: str) -> None:
        self.settings.theme = theme
        apply_theme(QApplication.instance(), theme)

    # ---- settings -----------------------------------------------------------------------------------

    def _restore(self) -> None:
        settings = self.settings
        if settings.geometry is not None:
            self.restoreGeometry(settings.geometry)
        else:
            self.resize(1280, 820)
        for state, splitter in ((settings.generate_split, self.generate.splitter),
                                (settings.gallery_split, self.gallery.splitter)):
            if state is not None:
                splitter.restoreState(state)
        if settings.form:
            self.generate.apply_values(settings.form)
        self.tabs.setCurrentIndex(settings.tab)

    def save_settings(self) -> None:
        settings = self.settings
        settings.geometry = self.saveGeometry()
        settings.generate_split = self.generate.splitter.saveState()
        settings.gallery_split = self.gallery.splitter.saveState()
        settings.form = self.generate.form_values()
        settings.tab = self.tabs.currentIndex()
        settings.sync()

    def quit_without_asking(self) -> None:
        """SIGTERM / SIGINT: shut down as File → Quit does, without a question nobody may be there to answer."""
        self._ask_before_quitting = False
        self.close()

    def closeEvent(self, event):  # noqa: N802
        running = [what for what, client in (("A generation", self.client), ("A captioning job", self.caption.client))
                   if client.busy]
        if running and self._ask_before_quitting:
            answer = QMessageBox.question(self, "Quit Lumina Studio", f"{running[0]} is running. Stop it and quit?",
                                          QMessageBox.Yes | QMessageBox.No, QMessageBox.No)  # Enter keeps working
            if answer != QMessageBox.Yes:
                event.ignore()
                return
        self.save_settings()
        self.client.stop()
        self.caption.stop()
        self.train.stop()
        self.gallery.stop()
        if self.library is not None:
            self.library.close()
        event.accept()


def library_versions() -> str:
    """The engine's libraries, from their installed metadata: importing torch here would cost seconds."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for label, names in (("PyTorch", ("torch",)), ("ONNX Runtime", ("onnxruntime-gpu", "onnxruntime")),
                         ("diffusers", ("diffusers",)), ("transformers", ("transformers",))):
        for name in names:
            try:
                found.append(f"{label} {version(name)}")
                break
            except PackageNotFoundError:
                continue
    return ", ".join(found)


class ReadableIndicators(QProxyStyle):
    """Fusion with a visible outline round check boxes and radio buttons: in the dark palette it draws them
    dark grey on dark grey (its outline is the window colour, darker). A style, not a style sheet: switching an
    app-wide style sheet at run time crashed Qt under an open wizard."""

    def drawPrimitive(self, element, option, painter, widget=None):  # noqa: N802 (Qt naming)
        super().drawPrimitive(element, option, painter, widget)
        if element in (QStyle.PE_IndicatorCheckBox, QStyle.PE_IndicatorRadioButton):
            painter.save()
            painter.setRenderHint(QPainter.Antialiasing)
            painter.setPen(QPen(QColor("#a0a0a0"), 1))
            painter.setBrush(Qt.NoBrush)
            box = QRectF(option.rect).adjusted(0.5, 0.5, -0.5, -0.5)
            if element == QStyle.PE_IndicatorCheckBox:
                painter.drawRoundedRect(box, 2, 2)
            else:
                painter.drawEllipse(box)
            painter.restore()


def apply_theme(app: QApplication, theme: str) -> None:
    """System follows the platform's palette (light or dark); light and dark are fixed Fusion palettes."""
    if theme == "system":
        app.setPalette(QPalette())  # the platform theme's palette, which follows its colour scheme
        return
    app.setStyle(ReadableIndicators("Fusion") if theme == "dark" else "Fusion")
    if theme == "light":
        app.setPalette(app.style().standardPalette())
        return
    palette = QPalette()
    colours = {
        QPalette.Window: "#2b2b2b", QPalette.WindowText: "#e6e6e6", QPalette.Base: "#1f1f1f",
        QPalette.AlternateBase: "#2b2b2b", QPalette.Text: "#e6e6e6", QPalette.Button: "#353535",
        QPalette.ButtonText: "#e6e6e6", QPalette.Highlight: "#3d7bd9", QPalette.HighlightedText: "#ffffff",
        QPalette.ToolTipBase: "#353535", QPalette.ToolTipText: "#e6e6e6", QPalette.PlaceholderText: "#8c8c8c",
        QPalette.Link: "#7aa7ff",
    }
    for role, colour in colours.items():
        palette.setColor(role, QColor(colour))
    palette.setColor(QPalette.Disabled, QPalette.Text, QColor("#7a7a7a"))
    palette.setColor(QPalette.Disabled, QPalette.ButtonText, QColor("#7a7a7a"))
    app.setPalette(palette)


def run(argv: list[str] | None = None, device: str = "auto") -> int:
    import sys

    app = QApplication.instance() or QApplication(argv if argv is not None else sys.argv)
    app.setApplicationName("Lumina Studio")
    theme = AppSettings().theme
    apply_theme(app, theme if theme in THEMES else "system")
    window = MainWindow(device=device)
    window.show()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: window.quit_without_asking())
    # Python runs signal handlers only between bytecodes; a timer gives it that chance while Qt waits.
    wake = QTimer(interval=200)
    wake.timeout.connect(lambda: None)
    wake.start()
    return app.exec()

