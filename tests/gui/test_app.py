"""The app: a real window (offscreen) and the real worker process, over the scripted engine (scripted_engine.py);
the main path once over the tiny model and once over the demo model."""

import json
import os
import signal
import subprocess
import sys
import zipfile

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox

from core.metadata import read_settings

from app_helpers import SMALL, generate, wait_idle
from scripted_engine import SERVICE as SCRIPTED
from scripted_engine import release

pytestmark = pytest.mark.filterwarnings("ignore")


def test_ctrl_enter_previews_and_the_gallery(real_window, qtbot):
    window = real_window
    previews = []
    window.client.preview.connect(previews.append)
    window.generate.apply_values({**SMALL, "prompt": "a red circle on the left"})
    window.generate.prompt.setFocus()
    qtbot.keyClick(window.generate.prompt, Qt.Key_Return, Qt.ControlModifier)
    qtbot.waitUntil(lambda: window.gallery.model.rowCount() == 1, timeout=120_000)
    assert len(previews) == 3 and window.generate.view.has_image()
    entry = window.gallery.model.entries[0]
    assert entry.prompt == "a red circle on the left" and read_settings(entry.path)["steps"] == 3
    assert "tokens" in window.generate.tokens.text()


def test_queue_three_and_cancel_the_middle_one(window, qtbot):
    buttons = window.generate.queue.buttons
    assert not any(button.isEnabled() for button in buttons.values())  # an empty queue offers nothing
    for prompt in ("first job [hold]", "second job", "third job"):
        generate(window, qtbot, prompt)
    middle = window.client.worker.pending[-2]
    window.generate.queue.select(middle.id)
    # the first waiting job: it can go down, not up; the running one can be stopped
    assert {key for key, button in buttons.items() if button.isEnabled()} == {"down", "cancel", "cancel waiting",
                                                                               "stop"}
    window.generate.queue.cancel_selected()
    release()
    wait_idle(window, qtbot)
    qtbot.waitUntil(lambda: window.gallery.model.rowCount() == 2, timeout=30_000)
    assert sorted(e.prompt for e in window.gallery.model.entries) == ["first job [hold]", "third job"]


def test_search_delete_undo_export(window, qtbot, tmp_path):
    for prompt in ("a lighthouse at dusk", "a fox in the snow"):
        generate(window, qtbot, prompt)
    wait_idle(window, qtbot)
    qtbot.waitUntil(lambda: window.gallery.model.rowCount() == 2, timeout=30_000)
    window.focus_search()
    qtbot.keyClicks(window.gallery.search, "lighthouse")
    qtbot.waitUntil(lambda: window.gallery.model.rowCount() == 1, timeout=5_000)
    window.gallery.select_row(0)
    window.gallery.delete_selected()
    assert window.gallery.model.rowCount() == 0
    qtbot.keyClick(window, Qt.Key_Z, Qt.ControlModifier)
    assert window.gallery.model.rowCount() == 1 and window.gallery.model.entries[0].path.exists()
    window.gallery.search.clear()
    qtbot.waitUntil(lambda: window.gallery.model.rowCount() == 2, timeout=5_000)
    window.gallery.select_all()
    window.gallery.export_selection(str(tmp_path / "out.zip"), strip_metadata=False)
    qtbot.waitUntil(lambda: window.gallery.exporting is None, timeout=30_000)  # off the GUI thread
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        assert len([n for n in archive.namelist() if n.endswith(".png")]) == 2
        manifest = [json.loads(line) for line in archive.read("metadata.jsonl").decode().splitlines()]
    assert sorted(m["prompt"] for m in manifest) == ["a fox in the snow", "a lighthouse at dusk"]


def test_use_settings_and_drop_an_image(window, qtbot):
    generate(window, qtbot, "settings to reuse", steps=4, seed=77)
    wait_idle(window, qtbot)
    qtbot.waitUntil(lambda: window.gallery.model.rowCount() == 1, timeout=30_000)
    path = window.gallery.model.entries[0].path
    window.generate.apply_values({"prompt": "something else", "steps": 9})
    with qtbot.waitSignal(window.generate.settings_loaded, timeout=10_000):
        window.generate.load_settings_from(str(path))
    assert window.generate.prompt.toPlainText() == "settings to reuse"
    assert (window.generate.steps.value(), window.generate.seed.value()) == (4, 77)


def test_a_killed_engine_is_survived_and_the_interrupted_job_runs_again(window, qtbot):
    generate(window, qtbot, "interrupted [hold]")
    generate(window, qtbot, "survivor")
    qtbot.waitUntil(lambda: window.client.worker.current is not None and window.generate.progress.value() > 0,
                    timeout=60_000)
    job = window.client.worker.current.id
    os.kill(window.client.worker.pid, signal.SIGKILL)
    qtbot.waitUntil(lambda: "restarted" in window.banner.text(), timeout=30_000)
    assert f"Job #{job} was interrupted" in window.banner.text() and "head of the queue" in window.banner.text()
    release()
    qtbot.waitUntil(lambda: window.gallery.model.rowCount() == 2, timeout=180_000)
    assert [e.prompt for e in window.gallery.model.entries] == ["survivor", "interrupted [hold]"]  # newest first
    wait_idle(window, qtbot)


def test_settings_survive_a_restart(window, qtbot):
    from app.main_window import MainWindow

    window.generate.apply_values({"prompt": "remember me", "steps": 23, "guidance": 5.5, "solver": "dpm"})
    assert not window.store_model_path.isChecked()  # images name their model by name and hash by default
    window.store_model_path.trigger()
    window.close()
    again = MainWindow(device="cpu", generation_service=SCRIPTED)
    qtbot.addWidget(again)
    try:
        values = again.generate.form_values()
        assert (values["prompt"], values["steps"], values["guidance"], values["solver"]) == ("remember me", 23, 5.5, "dpm")
        assert again.generate.model.currentData() == "tiny"
        assert again.store_model_path.isChecked() and again.generate.store_model_path
    finally:
        again.client.stop()


def test_closing_during_a_job_asks_first(window, qtbot, monkeypatch):
    generate(window, qtbot, "long [hold]")
    qtbot.waitUntil(lambda: window.client.worker.current is not None, timeout=60_000)
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.No)
    assert not window.close() and window.client.worker is not None
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.Yes)
    assert window.close() and window.client.worker is None


def test_without_a_model_the_window_says_what_to_do(qtbot, data_home, monkeypatch, tmp_path):
    from app.main_window import MainWindow
    from core.models import registry

    monkeypatch.setattr(registry, "DEMO_FOLDER", tmp_path / "no-demo")  # an installation without the demo
    win = MainWindow(device="cpu")
    qtbot.addWidget(win)
    assert "No model yet" in win.banner.text() and win.client.worker is None


def test_a_fresh_install_opens_with_the_demo_model(qtbot, data_home):
    from app.main_window import MainWindow

    win = MainWindow(device="cpu")
    qtbot.addWidget(win)
    try:
        qtbot.waitUntil(lambda: bool(win.client.info), timeout=120_000)
        values = win.generate.form_values()
        assert win.generate.model.currentData() == "demo" and (values["width"], values["height"]) == (64, 64)
        assert (values["cfg_trunc"], values["cfg_renorm"], values["steps"]) == (1.0, 0.0, 18)  # its own defaults
        win.generate.apply_values({"prompt": "a red circle in the centre, white background", "steps": 6,
                                   "seed_mode": "fixed", "seed": 1})
        win.generate.request_generation()
        qtbot.waitUntil(lambda: win.gallery.model.rowCount() == 1, timeout=120_000)
        assert read_settings(win.gallery.model.entries[0].path)["model"] == "demo"
    finally:
        win.client.stop()


def test_the_app_process_does_not_import_torch(home, tmp_path):
    code = (
        "import sys\n"
        "from PySide6.QtWidgets import QApplication\n"
        "from app.main_window import MainWindow\n"
        "app = QApplication([])\n"
        "w = MainWindow(device='cpu'); w.show(); app.processEvents()\n"
        "print('torch' in sys.modules)\n"
        "w.client.stop()\n"
    )
    script = tmp_path / "probe.py"
    script.write_text("if __name__ == '__main__':\n" + "".join("    " + line + "\n" for line in code.splitlines()))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr


def test_rebuild_runs_off_the_gui_thread_and_lists_bad_files(window, qtbot, monkeypatch):
    generate(window, qtbot, "to be re-indexed")
    wait_idle(window, qtbot)
    (window.library.folder / "notes.txt").write_text("not an image")
    shown = []
    monkeypatch.setattr(QMessageBox, "information", lambda parent, title, text: shown.append(text))
    window.rebuild_library()
    qtbot.waitUntil(lambda: bool(shown), timeout=30_000)
    assert "Indexed 1 image(s)" in shown[0] and "notes.txt" in shown[0]
    assert window.gallery.model.rowCount() == 1


def test_seeds_of_the_full_range_round_trip_through_every_path(window, qtbot, tmp_path, monkeypatch):
    """Random seeds use 0 … 2^64 − 1: half of them are past a C int64 (a Qt int signal or a QVariantMap)."""
    from PySide6.QtWidgets import QFileDialog

    from test_library import make_png

    top = 2**64 - 1
    path = make_png(window.library.folder, "big-seed", "a seed past 2^63", seed=top)
    window.gallery.pick_up_new_files()
    qtbot.waitUntil(lambda: window.gallery.model.rowCount() == 1, timeout=10_000)
    window.gallery.select_row(0)
    assert window.gallery.selected()[0].seed == top
    window.generate.use_seed(5)
    window.gallery._use_seed()
    assert window.generate.seed.value() == top
    window.generate.apply_values({"prompt": "something else", "steps": 9, "seed": 5})
    window.gallery._use_settings()
    assert window.generate.prompt.toPlainText() == "a seed past 2^63" and window.generate.seed.value() == top
    window.generate.use_seed(5)
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(path), ""))
    with qtbot.waitSignal(window.generate.settings_loaded, timeout=10_000):
        window.open_image()  # File → Open image (a dropped file takes the same way)
    assert window.generate.seed.value() == top
    generate(window, qtbot, "queued with the top seed", seed=top, seed_mode="fixed")
    wait_idle(window, qtbot)
    qtbot.waitUntil(lambda: window.gallery.model.rowCount() == 2, timeout=30_000)
    assert {e.seed for e in window.gallery.model.entries} == {top}


def test_esc_on_the_second_image_shows_the_first_and_a_cancelled_state(window, qtbot):
    previews = []
    window.client.preview.connect(lambda event: previews.append(event.data))
    generate(window, qtbot, "three of them [hold 2]", count=3)
    qtbot.waitUntil(lambda: any(p.image == 1 for p in previews), timeout=120_000)  # image 2 is forming
    window.client.stop_current()  # what Esc does
    wait_idle(window, qtbot)
    text = window.generate.parameters.text()
    assert "cancelled: the images finished before are kept" in text and "Generating" not in text
    assert window.generate.view.has_image() and "cancelled" in window.generate.progress.format()
