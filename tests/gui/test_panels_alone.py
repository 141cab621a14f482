"""Panels built on their own, without an engine (seconds, not a model load): files that are damaged, odd or
hostile never crash a panel, lose data or take over the window (fed what a broken disk, another program or an
attacker leaves behind), and the smaller things a new user met (the wheel over a form, the Gallery's
selection, the demo folder, where a caption came from)."""

from __future__ import annotations

import json
import math
import sqlite3

import pytest
from PySide6.QtGui import Qt  # QtGui.Qt also has mightBeRichText

from core.captioning.state import STATE_FILE
from core.captioning.files import read_captions, sidecar
from core.scenes.world import write_dataset
from core.storage import runs_dir
from trainer.run_folder import RunFolder

HOSTILE = "<img src='/etc/passwd'><h1>TAKEOVER</h1>"


@pytest.fixture
def caption_panel(qtbot):
    from app.caption_panel import CaptionPanel
    from app.settings import AppSettings

    panel = CaptionPanel(AppSettings(), "cpu")
    qtbot.addWidget(panel)
    panel.show()
    return panel


def shows_markup(label) -> bool:
    """Whether a label would draw `HOSTILE` as markup (an image, a heading) rather than as written."""
    text = label.text()
    rich = label.textFormat() == Qt.RichText or (label.textFormat() == Qt.AutoText and Qt.mightBeRichText(text))
    return rich and "<h1>" in text


def test_a_damaged_state_file_is_set_aside_and_the_captions_kept(caption_panel, tmp_path):
    folder = tmp_path / "scenes"
    write_dataset(folder, 3, seed=2)
    kept = {p.name: p.read_text() for p in folder.glob("*.txt")}
    (folder / STATE_FILE).write_bytes(b"SQLite format 3\x00" + b"\x13" * 5000)
    caption_panel.open_folder(folder)
    assert caption_panel.dataset is not None and caption_panel.model.rowCount() == 3
    assert "was damaged and was set aside" in caption_panel.notice.text()
    assert list(folder.glob(f"{STATE_FILE}.damaged-*"))
    assert {p.name: p.read_text() for p in folder.glob("*.txt")} == kept


def test_an_unknown_review_status_counts_as_unreviewed(caption_panel, tmp_path, qtbot):
    folder = tmp_path / "scenes"
    write_dataset(folder, 2, seed=2)
    caption_panel.open_folder(folder)
    caption_panel.dataset.close()
    with sqlite3.connect(folder / STATE_FILE) as db:
        db.execute("INSERT INTO reviews VALUES ('scene-00000.png', 'from the future', 0)")
    caption_panel.open_folder(folder)
    index = caption_panel.model.index(0, 0)
    assert caption_panel.dataset.status_of("scene-00000.png") == "unreviewed"
    for role in (Qt.DisplayRole, Qt.ForegroundRole, Qt.ToolTipRole):
        caption_panel.model.data(index, role)
    caption_panel.list.viewport().repaint()


def test_a_caption_file_that_is_not_utf8_is_held_until_converted(caption_panel, tmp_path, qtbot):
    folder = tmp_path / "scenes"
    write_dataset(folder, 2, seed=2)
    latin = sidecar(folder / "scene-00000.png")
    latin.write_bytes("a café near the señor's house\n".encode("latin-1"))
    caption_panel.open_folder(folder)
    caption_panel.select_row(0)
    editor = caption_panel.editor
    assert editor.text.toPlainText() == "a café near the señor's house"
    assert editor.text.isReadOnly() and "not UTF-8" in editor.held.text() and editor.convert_button.isVisible()
    caption_panel.controller.edit_captions("scene-00000.png", ["x"])  # an edit that got through anyway is refused
    assert "left as it is" in caption_panel.notice.text()
    assert latin.read_bytes() == "a café near the señor's house\n".encode("latin-1")
    editor.convert_button.click()
    assert latin.read_text(encoding="utf-8") == "a café near the señor's house\n"
    assert not editor.text.isReadOnly() and not editor.convert_button.isVisible()


def test_a_huge_caption_file_is_shown_in_part_and_left_alone(caption_panel, tmp_path):
    from app.caption_panel import EDITOR_LINES

    folder = tmp_path / "scenes"
    write_dataset(folder, 2, seed=2)
    big = sidecar(folder / "scene-00000.png")
    big.write_text("".join(f"caption number {n}\n" for n in range(10_000)))
    before = big.read_bytes()
    caption_panel.open_folder(folder)
    caption_panel.select_row(0)
    editor = caption_panel.editor
    assert len(editor.lines()) == EDITOR_LINES and editor.text.isReadOnly()
    assert "10,000 lines" in editor.held.text()
    caption_panel.select_row(1)
    assert big.read_bytes() == before


def test_text_from_files_is_never_drawn_as_markup_in_the_caption_panel(caption_panel, tmp_path):
    folder = tmp_path / "scenes"
    write_dataset(folder, 1, seed=2)
    image = folder / "scene-00000.png"
    hostile_image = folder / f"{HOSTILE.replace('/', '_')}.png"
    image.rename(hostile_image)
    sidecar(image).rename(sidecar(hostile_image))
    caption_panel.open_folder(folder)
    state = caption_panel.dataset.state
    written = [{"text": read_captions(hostile_image)[0], "source": HOSTILE, "style": HOSTILE}]
    state.update_captions("run", hostile_image, written, lambda current: current)  # a captioner named HOSTILE wrote it
    caption_panel.show_image(hostile_image.name)
    assert "TAKEOVER" in caption_panel.image_label.text() and not shows_markup(caption_panel.image_label)
    assert "TAKEOVER" in caption_panel.editor.info.text() and "<h1>" not in caption_panel.editor.info.text()


def test_damaged_run_folders_are_listed_with_what_is_wrong(qtbot):
    from app.train_panel import TrainPanel

    for name, status in (("bad", {"state": {}, "step": "abc", "time": "yesterday"}), ("list", ["x"]),
                         (HOSTILE.replace("/", "_"), {"state": "failed", "message": HOSTILE})):
        run = RunFolder(runs_dir() / name)
        run.path.mkdir(parents=True)
        run.config.write_text("name = 'x'\n")
        run.status_file.write_text(json.dumps(status))
    good = RunFolder(runs_dir() / "good")
    good.path.mkdir()
    good.config.write_text("name = 'x'\n")
    good.set_status("stopped", step=2)
    panel = TrainPanel()
    qtbot.addWidget(panel)
    panel.show()
    names = {panel.runs.item(row, 0).text(): panel.runs.item(row, 1).text() for row in range(panel.runs.rowCount())}
    assert len(names) == 4 and names["bad"] == "unknown (damaged files)" and names["good"] == "stopped"
    for row in range(panel.runs.rowCount()):
        panel.runs.selectRow(row)
        assert not shows_markup(panel.headline)
    panel.select_run(runs_dir() / "bad")
    assert "status.json: 'step' is not a whole number" in panel.headline.text()


def test_a_plot_of_constant_huge_losses_draws(qtbot):
    from app.loss_plot import LossPlot
    from trainer.events import Step

    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(400, 200)
    for step, loss in enumerate([1e30] * 5 + [1.7e308] * 3 + [math.inf]):
        plot.add_step(Step(step, loss=loss))
    plot.grab()  # paints: a ZeroDivisionError here was a blank plot and a logged traceback per paint
    plot.set_log_scale(True)
    plot.grab()


def test_a_one_point_plot_is_drawn_around_its_value():
    from app.loss_plot import value_range

    lowest, highest = value_range(0.148, 0.148)
    assert 0.13 < lowest < 0.148 < highest < 0.17
    assert value_range(0.0, 0.0) == (-0.1, 0.1) and value_range(0.1, 0.9) == (0.1, 0.9)


def test_a_server_elsewhere_is_asked_about_and_the_key_stays_private(caption_panel, tmp_path, monkeypatch):
    from app import caption_panel as module
    from app import plain_text

    monkeypatch.setenv("LUMINA_STUDIO_API_KEY", "sk-secret")
    folder = tmp_path / "scenes"
    write_dataset(folder, 1, seed=2)
    caption_panel.open_folder(folder)
    caption_panel.captioner.setCurrentIndex(caption_panel.captioner.findData(module.SERVER))
    assert caption_panel.api_key.isVisibleTo(caption_panel)
    caption_panel.api_key.setText("sk-typed")
    caption_panel.server_url.setText("http://192.0.2.7:8000/v1")
    choice = caption_panel.captioner_choice()
    assert choice.api_key == "sk-typed" and "sk-typed" not in repr(choice)
    asked = []
    monkeypatch.setattr(plain_text, "ask", lambda parent, title, text: asked.append(text) and False)
    started = []
    monkeypatch.setattr(caption_panel.client, "start", lambda options: started.append(options))
    assert not caption_panel.controller.caption(choice, ["detailed"], "skip", None, "test")
    assert "192.0.2.7 is not this computer" in asked[0] and not started and not caption_panel.client.jobs()


def test_compare_lines_opens_cleanly(qtbot):
    from app.caption_dialogs import CompareDialog

    dialog = CompareDialog("a.png", [{"text": "a red cat", "style": "detailed", "source": "demo"},
                                     {"text": HOSTILE, "style": "", "source": "from the file"}])
    qtbot.addWidget(dialog)
    assert "TAKEOVER" in dialog.right_text.toPlainText() and "&lt;h1&gt;" in dialog.right_text.toHtml()


def test_text_from_files_is_never_drawn_as_markup_elsewhere(qtbot, tmp_path, monkeypatch):
    """The Gallery tooltip (a PNG's prompt), the Generate message (a dropped file's name), the sample dialog
    (a sample's prompt) and the "Not a captioning model" box (config.json's model_type)."""
    from PySide6.QtWidgets import QDialog, QFileDialog, QTextBrowser

    from app import plain_text
    from app.caption_panel import CaptionPanel
    from app.gallery_panel import GalleryPanel
    from app.generate_panel import GeneratePanel
    from app.settings import AppSettings
    from app.train_panel import TrainPanel
    from app.worker_client import WorkerClient
    from core.generation.service import SERVICE
    from core.library import Library
    from test_library import make_png

    library = Library(tmp_path / "library")
    library.add(make_png(library.folder, "hostile", HOSTILE, seed=1))
    gallery = GalleryPanel(library)
    qtbot.addWidget(gallery)
    gallery.refresh()
    tip = gallery.model.data(gallery.model.index(0, 0), Qt.ToolTipRole)
    assert "&lt;h1&gt;TAKEOVER" in tip and "<h1>" not in tip

    generate = GeneratePanel(WorkerClient(SERVICE, "engine"))
    qtbot.addWidget(generate)
    dropped = tmp_path / f"{HOSTILE.replace('/', '_')}.png"
    dropped.write_bytes(b"not a png")
    generate.load_settings_from(str(dropped))
    qtbot.waitUntil(lambda: "not a readable image" in generate.message.text())
    assert "TAKEOVER" in generate.message.text() and not shows_markup(generate.message)

    train = TrainPanel()
    qtbot.addWidget(train)
    sample = make_png(tmp_path, "sample", HOSTILE, seed=2)
    item = type("Item", (), {"data": lambda self, role: str(sample)})()
    train._enlarge_sample(item)
    dialog = next(w for w in train.findChildren(QDialog))
    [details] = dialog.findChildren(QTextBrowser)
    assert "TAKEOVER" in details.toPlainText() and "<h1>" not in details.toHtml()
    dialog.close()

    folder = tmp_path / "not-a-captioner"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": HOSTILE}))
    panel = CaptionPanel(AppSettings(), "cpu")
    qtbot.addWidget(panel)
    shown = []
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(folder))
    monkeypatch.setattr(plain_text, "message", lambda parent, title, text: shown.append((title, text)))
    panel.add_captioner.click()
    assert shown and shown[0][0] == "Not a captioning model" and "TAKEOVER" in shown[0][1]


def test_the_wheel_scrolls_the_generate_form_unless_a_box_has_the_focus(qtbot):
    from PySide6.QtCore import QPoint, QPointF
    from PySide6.QtGui import QWheelEvent
    from PySide6.QtWidgets import QApplication

    from app.generate_panel import GeneratePanel
    from app.worker_client import WorkerClient
    from core.generation.service import SERVICE

    panel = GeneratePanel(WorkerClient(SERVICE, "engine"))
    qtbot.addWidget(panel)
    panel.resize(900, 260)  # the form scrolls
    panel.show()
    panel.shift.setValue(6.0)

    def wheel(widget):
        event = QWheelEvent(QPointF(5, 5), QPointF(widget.mapToGlobal(QPoint(5, 5))), QPoint(0, 0), QPoint(0, -120),
                            Qt.NoButton, Qt.NoModifier, Qt.NoScrollPhase, False)
        QApplication.sendEvent(widget, event)

    bar = panel.form_scroll.verticalScrollBar()
    assert bar.maximum() > 0
    wheel(panel.shift)
    assert panel.shift.value() == 6.0 and bar.value() > 0  # the form scrolled, the value stayed
    panel.shift.setFocus()
    qtbot.waitUntil(panel.shift.hasFocus)
    wheel(panel.shift)
    assert panel.shift.value() != 6.0  # a focused box takes the wheel


def test_make_a_demo_folder_gives_pictures_to_caption(caption_panel, qtbot):
    caption_panel.demo_button.click()
    qtbot.waitUntil(lambda: caption_panel.dataset is not None and caption_panel.model.rowCount() == 48,
                    timeout=60_000)
    folder = caption_panel.dataset.folder
    assert folder.name == "demo-scenes" and not list(folder.glob("*.txt"))
    assert "demo captioner" in caption_panel.notice.text()
    caption_panel.demo_button.click()  # a second one goes beside the first
    qtbot.waitUntil(lambda: caption_panel.dataset.folder.name == "demo-scenes-2", timeout=60_000)


def test_the_gallery_keeps_its_selection_and_says_what_is_selected(qtbot, tmp_path):
    from app.gallery_panel import GalleryPanel
    from core.library import Library
    from test_library import make_png

    library = Library(tmp_path / "library")
    for number, prompt in enumerate(["a red fox", "a blue barn", "a red kite", "a green frog"]):
        library.add(make_png(library.folder, f"img{number}", prompt, seed=number, model="tiny"))
    gallery = GalleryPanel(library)
    qtbot.addWidget(gallery)
    gallery.resize(900, 600)
    gallery.show()
    gallery.refresh()
    assert gallery.model.data(gallery.model.index(0, 0), Qt.DisplayRole).endswith("\ntiny")  # the model shows
    gallery.size_slider.setValue(96)
    assert gallery.grid.iconSize().width() == 96 and gallery.grid.gridSize().height() < 96 + 60

    gallery.search.setText("red")
    gallery.refresh()
    gallery.select_row(0)
    chosen = gallery.selected()[0].id
    gallery.search.clear()
    gallery.refresh()  # clearing the search keeps the image selected
    assert [e.id for e in gallery.selected()] == [chosen]
    row = gallery.model.entries.index(gallery.selected()[0])
    gallery.delete_selected()
    assert gallery.selected() and gallery.model.entries.index(gallery.selected()[0]) == min(row, 2)
    gallery.undo_delete()
    assert [e.id for e in gallery.selected()] == [chosen]  # what came back is selected
    gallery.select_all()
    assert "4 images selected" in gallery.details.toPlainText()


def test_captions_say_where_they_came_from_and_an_empty_filter_says_so(caption_panel, tmp_path):
    folder = tmp_path / "scenes"
    write_dataset(folder, 2, seed=2)
    caption_panel.open_folder(folder)
    caption_panel.select_row(0)
    assert "from the file" in caption_panel.editor.info.text()  # written by write_dataset, not by the app
    caption_panel.controller.edit_captions("scene-00000.png", ["typed in the panel"])
    caption_panel.show_image("scene-00000.png")
    assert "edited by hand" in caption_panel.editor.info.text()
    caption_panel.filter_text.setText("no caption says this")
    caption_panel.apply_filter()
    assert caption_panel.model.rowCount() == 0
    assert caption_panel.image_view.text() == "No image matches the filter."


def test_another_runs_loss_is_drawn_over_the_selected_ones(qtbot):
    """The same recipe in two memory modes, side by side in the monitor."""
    from app.train_panel import TrainPanel

    for name, offset in (("fp32-adamw", 0.0), ("bf16-adafactor", 0.01)):
        run = RunFolder(runs_dir() / name)
        run.path.mkdir(parents=True)
        run.config.write_text("name = 'x'\n")
        run.set_status("finished", step=50)
        run.events.write_text("".join(json.dumps({"event": "step", "step": s, "stage": "a", "loss": 1 / s + offset})
                                      + "\n" for s in range(1, 51)))
    panel = TrainPanel()
    qtbot.addWidget(panel)
    panel.resize(900, 600)
    panel.show()
    panel.select_run(runs_dir() / "bf16-adafactor")
    qtbot.waitUntil(lambda: len(panel.plot.steps) == 50)
    assert [panel.compare.itemText(i) for i in range(panel.compare.count())][0] == "no other run"
    index = panel.compare.findData(str(runs_dir() / "fp32-adamw"))
    panel.compare.setCurrentIndex(index)
    panel.compare.activated.emit(index)
    qtbot.waitUntil(lambda: panel.plot.comparison is not None)
    assert panel.plot.comparison_name == "fp32-adamw" and len(panel.plot.comparison.smoothed) == 50
    steps, curve = panel.plot._comparison_curve()
    assert len(steps) == 50 and curve[-1] < panel.plot.points.smoothed[-1]  # the other run's loss is lower
    panel.plot.grab()
    panel.refresh_runs()  # the choice survives a refresh of the list
    assert panel.compare.currentData() == str(runs_dir() / "fp32-adamw")
    panel.compare.setCurrentIndex(0)
    panel.compare.activated.emit(0)
    assert panel.plot.comparison is None and panel.plot._comparison_curve() is None
