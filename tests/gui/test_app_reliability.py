"""The app keeps working through a damaged library, missing files, hostile PNGs and signals."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from app_helpers import generate, wait_idle
from scripted_engine import SERVICE as SCRIPTED
from scripted_engine import release

from core.generation.messages import BackendChoice
from core.library import INDEX
from core.storage import library_dir

sys.path.insert(0, str(Path(__file__).parents[1]))
from hostile_pngs import hostile_files, png_with_text  # noqa: E402
from test_library_reliability import damaged_library  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.mark.parametrize("damage", ["middle", "header"])
def test_the_app_starts_on_a_damaged_library_and_rebuilds_it(qtbot, home, damage):
    from app.main_window import MainWindow

    damaged_library(library_dir(), damage, images=200)
    win = MainWindow(device="cpu", generation_service=SCRIPTED)
    qtbot.addWidget(win, before_close_func=lambda w: w.client.stop())
    win.show()
    assert win.notice.isVisible() and "damaged" in win.notice.text() and "kept as" in win.notice.text()
    qtbot.waitUntil(lambda: "rebuilt from its files: 200 image(s)" in win.notice.text(), timeout=60_000)
    qtbot.waitUntil(lambda: bool(win.client.info), timeout=120_000)
    assert win.notice.isVisible() and "rebuilt" in win.notice.text()  # the engine's banner did not replace it
    assert win.gallery.count_label.text() == "200 image(s)"
    win.gallery.favourites.setChecked(True)
    assert win.gallery.model.rowCount() == 1
    assert list(library_dir().glob(f"{INDEX}.damaged-*"))


def test_deleting_images_whose_file_is_gone_and_undo(window, qtbot):
    for prompt in ("one", "two", "three"):
        generate(window, qtbot, prompt)
    wait_idle(window, qtbot)
    qtbot.waitUntil(lambda: window.gallery.model.rowCount() == 3, timeout=30_000)
    messages = []
    window.gallery.status.connect(messages.append)
    window.gallery.model.entries[1].path.unlink()
    assert not any(button.isEnabled() for button in window.gallery.action_buttons)  # nothing selected yet
    window.gallery.select_all()
    assert all(button.isEnabled() for button in window.gallery.action_buttons)
    window.gallery.delete_selected()
    assert "Moved 2 image(s)" in messages[-1] and "no longer on disk" in messages[-1]
    assert window.gallery.model.rowCount() == 0
    assert not any(button.isEnabled() for button in window.gallery.action_buttons)
    window.gallery.undo_delete()
    assert "Restored 2 image(s)" in messages[-1]
    assert sorted(e.prompt for e in window.gallery.model.entries) == ["one", "three"]
    assert all(e.path.exists() for e in window.gallery.model.entries)


def test_dropping_crafted_pngs_shows_one_message_and_keeps_the_form(window, qtbot, tmp_path):
    window.generate.apply_values({"prompt": "keep me", "steps": 7})
    files = hostile_files(tmp_path, ["width-nan", "a1111-nan", "comfy-list", "deep-json", "ztxt-bomb"])
    for name, path in files.items():
        window.generate.load_settings_from(str(path))
        qtbot.waitUntil(lambda: "Reading" not in window.generate.message.text(), timeout=10_000)
        assert path.name in window.generate.message.text(), name
        assert window.generate.prompt.toPlainText() == "keep me" and window.generate.steps.value() == 7
    assert "guidance" in _message_for(window, qtbot, files["a1111-nan"])
    assert "width" in _message_for(window, qtbot, files["width-nan"])


def _message_for(window, qtbot, path) -> str:
    window.generate.load_settings_from(str(path))
    qtbot.waitUntil(lambda: "Reading" not in window.generate.message.text(), timeout=10_000)
    return window.generate.message.text()


def test_dropping_a_huge_parameters_chunk_does_not_block_the_gui_thread(window, qtbot, tmp_path):
    path = png_with_text(tmp_path / "big.png", [("parameters", "a big one\nSteps: 5, " + " " * 900_000 + "x")])
    start = time.perf_counter()
    window.generate.load_settings_from(str(path))
    assert time.perf_counter() - start < 0.05  # the read happens on the thread pool
    qtbot.waitUntil(lambda: "Reading" not in window.generate.message.text(), timeout=10_000)


APP = """
import sys
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication
from app.main_window import run
if __name__ == "__main__":
    qt = QApplication([])
    QTimer.singleShot(0, lambda: print("started", flush=True))
    sys.exit(run([sys.argv[0]], device="cpu"))
"""


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_app_quits_like_file_quit(home, tmp_path, how):
    from app.settings import AppSettings

    script = tmp_path / "launch.py"  # not app.py: that would shadow the package
    script.write_text(APP)
    app = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "QT_QPA_PLATFORM": "offscreen",
                                "PYTHONPATH": str(Path(__file__).parents[2])})
    try:
        assert app.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 60  # a safety net: the engine process starts within a second or two
        while not (children := _children(app.pid)):
            assert time.monotonic() < deadline, "the engine process did not start"
            time.sleep(0.05)
        app.send_signal(how)
        assert app.wait(30) == 0, app.stderr.read()
        assert AppSettings().geometry is not None  # settings were saved, as on File → Quit
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(Path(f"/proc/{pid}").exists() for pid in children)
    finally:
        app.kill()
        app.wait()


def _children(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(status.parent.name))
    return found


def test_the_models_dialog_refuses_a_fake_checkpoint_without_freezing(qtbot, home, tiny_model, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    from app.model_manager import ModelManager

    fake = tmp_path / "fake.safetensors"
    fake.write_text("0123456789")
    warnings = []
    monkeypatch.setattr(QMessageBox, "warning", lambda parent, title, text: warnings.append(text))
    dialog = ModelManager()
    qtbot.addWidget(dialog)
    rows = dialog.table.rowCount()
    dialog.add(str(fake), components=str(tiny_model))
    qtbot.waitUntil(lambda: bool(warnings), timeout=30_000)
    assert "not a readable .safetensors" in warnings[0]
    assert dialog.table.rowCount() == rows and dialog.added is None and dialog.isEnabled()


def test_a_worker_error_goes_to_the_log_with_its_traceback(window, qtbot, tmp_path, monkeypatch):
    from core.logs import log_file

    blocked = tmp_path / "a-file"
    blocked.write_text("x")
    monkeypatch.setattr("app.generate_panel.library_dir", lambda: blocked / "library")
    generate(window, qtbot, "cannot be saved")
    qtbot.waitUntil(lambda: "Cannot write" in window.generate.message.text(), timeout=60_000)
    window.client.worker.poll()
    text = log_file().read_text()
    assert "Cannot write" in text and "Traceback" in text
    menu = [a.text() for a in window.menuBar().actions()[-1].menu().actions()]
    assert "Open &log folder" in menu


def test_full_range_seeds_and_cache_thresholds_round_trip_through_the_form(qtbot, home):
    from app.generate_panel import GeneratePanel
    from app.worker_client import WorkerClient
    from core.generation.service import SERVICE
    from core.generation.request import GenerationRequest

    panel = GeneratePanel(WorkerClient(SERVICE, "unused"))
    qtbot.addWidget(panel)
    panel.apply_values({"seed": 2**63 + 5, "cache": "2", "seed_mode": "fixed", "steps": "wide", "width": float("nan")})
    values = panel.form_values()
    assert (values["seed"], values["cache"], values["seed_mode"]) == (2**63 + 5, "2", "fixed")
    assert values["steps"] == 18 and values["width"] == 1024  # refused values leave the widgets as they were
    panel.use_seed(2**64 - 1)
    assert panel.form_values()["seed"] == 2**64 - 1
    # an image's time shift and compat mode come back too; no shift means the model's own
    panel.apply_values({"shift": 3.5, "compat": "diffusers"})
    assert (panel.form_values()["shift"], panel.form_values()["compat"]) == (3.5, "diffusers")
    assert panel.shift.text() == "3.50"
    panel.apply_values({"shift": -1, "compat": "comfy"})  # refused: unchanged
    assert (panel.form_values()["shift"], panel.form_values()["compat"]) == (3.5, "diffusers")
    panel.apply_values({"shift": None})
    assert panel.form_values()["shift"] is None and panel.shift.text() == "model default"
    assert GenerationRequest.from_values(panel.form_values()).shift is None


def test_gallery_picks_up_cli_images_keeps_selection_and_stars_in_place(window, qtbot, tiny_model):
    for prompt in ("first", "second"):
        generate(window, qtbot, prompt)
    wait_idle(window, qtbot)
    qtbot.waitUntil(lambda: window.gallery.model.rowCount() == 2, timeout=30_000)
    gallery = window.gallery
    gallery.select_row(1)
    selected = gallery.selected()[0]
    gallery.toggle_favourite()
    assert gallery.selected() and gallery.selected()[0].id == selected.id and gallery.selected()[0].favourite
    assert gallery.star_button.text() == "☆ Unstar" and "★ yes" in gallery.details.toPlainText()
    resets = []
    gallery.model.modelReset.connect(lambda: resets.append(1))
    out = subprocess.run([sys.executable, "-m", "core.cli", "generate", "from the command line", "--model",
                          str(tiny_model), "--width", "64", "--height", "48", "--steps", "2"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert out.returncode == 0, out.stderr
    qtbot.waitUntil(lambda: gallery.model.rowCount() == 3, timeout=20_000)
    assert gallery.model.entries[0].prompt == "from the command line" and not resets
    assert gallery.selected()[0].id == selected.id  # the selection followed its image

    # With the pointer over the grid a new image waits, so nothing moves under it, and comes when it leaves.
    from PySide6.QtCore import QPoint
    from PySide6.QtGui import QCursor

    window.tabs.setCurrentWidget(gallery)
    viewport = gallery.grid.viewport()
    QCursor.setPos(viewport.mapToGlobal(viewport.rect().center()))
    qtbot.waitUntil(gallery.pointer_over_grid, timeout=5_000)
    first = gallery.grid.indexAt(viewport.rect().center())
    generate(window, qtbot, "while the pointer is over the grid")
    wait_idle(window, qtbot)
    qtbot.waitUntil(lambda: gallery.held_button.isVisible(), timeout=30_000)
    assert gallery.model.rowCount() == 3 and gallery.grid.indexAt(viewport.rect().center()) == first
    assert gallery.held_button.text() == "↑ 1 new image(s)"
    QCursor.setPos(window.mapToGlobal(window.rect().topLeft()) - QPoint(50, 50))
    qtbot.waitUntil(lambda: gallery.model.rowCount() == 4, timeout=5_000)
    assert gallery.model.entries[0].prompt == "while the pointer is over the grid" and not gallery.held_button.isVisible()


def test_ctrl_z_in_the_search_field_undoes_a_delete(window, qtbot):
    from PySide6.QtCore import Qt

    generate(window, qtbot, "to delete")
    wait_idle(window, qtbot)
    qtbot.waitUntil(lambda: window.gallery.model.rowCount() == 1, timeout=30_000)
    window.tabs.setCurrentWidget(window.gallery)
    window.gallery.select_row(0)
    window.gallery.delete_selected()
    window.gallery.search.setFocus()
    qtbot.keyClick(window.gallery.search, Qt.Key_Z, Qt.ControlModifier)
    qtbot.waitUntil(lambda: window.gallery.model.rowCount() == 1, timeout=5_000)


def test_quitting_during_a_job_defaults_to_no(window, qtbot, monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    asked = []
    monkeypatch.setattr(QMessageBox, "question", lambda *args: asked.append(args) or args[-1])
    generate(window, qtbot, "long [hold]")
    qtbot.waitUntil(lambda: window.client.worker.current is not None, timeout=60_000)
    assert not window.close() and asked[0][-1] == QMessageBox.No


def test_the_demo_model_warns_about_words_it_does_not_know(qtbot, data_home):
    from app.main_window import MainWindow

    win = MainWindow(device="cpu")
    qtbot.addWidget(win, before_close_func=lambda w: w.client.stop())
    qtbot.waitUntil(lambda: bool(win.client.info), timeout=120_000)
    win.generate.prompt.setPlainText("a lighthouse at sunset, red circle")
    qtbot.waitUntil(lambda: "does not know: lighthouse, sunset" in win.generate.tokens.text(), timeout=10_000)
    win.generate.prompt.setPlainText("a red circle on the left, white background")
    qtbot.waitUntil(lambda: "does not know" not in win.generate.tokens.text()
                    and "tokens" in win.generate.tokens.text(), timeout=10_000)


def test_the_backend_measurement_makes_way_for_the_next_image(qtbot, home):

    from app.main_window import MainWindow
    from app.settings import AppSettings
    from app_helpers import SMALL

    AppSettings().form = {**SMALL, "backend": "auto"}  # auto, never measured here
    win = MainWindow(device="cpu", generation_service=SCRIPTED)  # its measurement holds until released
    qtbot.addWidget(win, before_close_func=lambda w: w.client.stop())
    qtbot.waitUntil(lambda: bool(win.client.info), timeout=120_000)
    seen = []
    win.client.started.connect(lambda job: seen.append(("started", job)))
    win.client.finished.connect(lambda job, outcome, _: seen.append((outcome, job)))
    win.client.result.connect(lambda event: seen.append(("measured", event.job))
                              if isinstance(event.data, BackendChoice) else None)
    generate(win, qtbot, "first", backend="auto")
    qtbot.waitUntil(lambda: win.measurement.job is not None, timeout=120_000)  # it follows the first image
    measurement = win.measurement.job
    qtbot.waitUntil(lambda: ("started", measurement) in seen, timeout=30_000)
    generate(win, qtbot, "second", backend="auto")  # a person's image while it exports and times the graphs
    second = win.client.jobs()[-1][0].id
    qtbot.waitUntil(lambda: ("done", second) in seen, timeout=120_000)
    assert ("cancelled", measurement) in seen and seen.index(("cancelled", measurement)) < seen.index(("done", second))
    release()
    qtbot.waitUntil(lambda: any(kind == "measured" for kind, _ in seen), timeout=300_000)  # then again, idle
    measured = next(i for i, (kind, _) in enumerate(seen) if kind == "measured")
    assert measured > seen.index(("done", second))
    qtbot.waitUntil(lambda: win.client.info.get("run", {}).get("backend") == "onnx", timeout=60_000)  # switched
