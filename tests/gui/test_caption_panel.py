"""The Caption tab end to end: a folder of scenes captioned by the demo captioner in its worker, reviewed with
the keyboard, filtered, fixed with find & replace (and one undo), exported in three formats that the
trainer reads back, and an app killed mid-edit that loses nothing typed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from app import plain_text
from core.captioning.messages import Summary
from core.captioning.files import read_captions, write_captions
from core.scenes.world import write_dataset

ROOT = Path(__file__).resolve().parents[2]


def scene_folder(folder: Path, count: int = 8, captions: bool = False) -> Path:
    write_dataset(folder, count, seed=5)
    if not captions:
        for txt in folder.glob("*.txt"):
            txt.unlink()
    return folder


def caption_all(panel, qtbot, styles=("detailed",)):
    for name, box in panel.styles.items():
        box.setChecked(name in styles)
    panel.scope.setCurrentIndex(panel.scope.findData("all"))
    panel.mode.setCurrentIndex(panel.mode.findData("skip"))
    summaries = []
    panel.client.result.connect(lambda event: summaries.append(event.data) if isinstance(event.data, Summary) else None)
    panel.caption_button.click()
    qtbot.waitUntil(lambda: bool(summaries), timeout=120_000)
    return summaries[0]


@pytest.fixture
def panel(window, qtbot):
    window.tabs.setCurrentWidget(window.caption)
    window.activateWindow()
    window.caption.list.setFocus()  # a person clicks the list; the tab's keys work from there
    qtbot.waitUntil(window.caption.list.hasFocus)
    return window.caption


def test_caption_review_with_the_keyboard_and_undo(window, panel, qtbot, tmp_path):
    folder = scene_folder(tmp_path / "scenes")
    panel.open_folder(folder)
    assert panel.model.rowCount() == 8 and panel.current == "scene-00000.png"
    summary = caption_all(panel, qtbot, ("detailed", "tags"))
    assert summary.captioned == 8 and not summary.failed
    lines = read_captions(folder / "scene-00000.png")
    assert len(lines) == 2 and "," in lines[1]
    qtbot.waitUntil(lambda: panel.editor.lines() == lines)
    assert "detailed · demo-captioner" in panel.editor.info.text() and "/256 tokens" in panel.editor.info.text()

    qtbot.keyClick(panel.list, Qt.Key_Return, Qt.ControlModifier)  # approve and next
    assert panel.dataset.status_of("scene-00000.png") == "approved" and panel.current == "scene-00001.png"
    qtbot.keyClick(panel.list, Qt.Key_3, Qt.AltModifier)  # reject
    assert panel.dataset.status_of("scene-00001.png") == "rejected"
    qtbot.keyClick(panel.list, Qt.Key_Down, Qt.AltModifier)
    assert panel.current == "scene-00002.png"
    qtbot.keyClick(panel.list, Qt.Key_N, Qt.AltModifier)  # next unreviewed: 3 (0 and 1 are reviewed)
    assert panel.current == "scene-00003.png"
    qtbot.keyClick(panel.list, Qt.Key_F2)
    assert panel.editor.text.hasFocus()
    panel.editor.text.moveCursor(panel.editor.text.textCursor().MoveOperation.End)
    qtbot.keyClicks(panel.editor.text, " with a soft shadow")
    qtbot.waitUntil(lambda: read_captions(folder / "scene-00003.png")[-1].endswith("with a soft shadow"))
    assert "edited by hand" in panel.editor.info.text()
    qtbot.keyClick(panel.list, Qt.Key_Up, Qt.AltModifier)  # away and back: the edit is there
    qtbot.keyClick(panel.list, Qt.Key_Down, Qt.AltModifier)
    assert panel.editor.lines()[-1].endswith("with a soft shadow")

    window.undo()  # Edit → Undo in the Caption tab undoes the edit
    assert not read_captions(folder / "scene-00003.png")[-1].endswith("with a soft shadow")
    assert not panel.editor.lines()[-1].endswith("with a soft shadow")
    window.undo()
    assert panel.dataset.status_of("scene-00001.png") == "unreviewed"
    panel.redo()
    assert panel.dataset.status_of("scene-00001.png") == "rejected"


def test_regenerate_asks_before_replacing_a_hand_edit(window, panel, qtbot, tmp_path, monkeypatch):
    folder = scene_folder(tmp_path / "scenes", 2)
    write_captions(folder / "scene-00000.png", ["typed by a person"])
    panel.open_folder(folder)
    answers = []
    monkeypatch.setattr(plain_text, "ask", lambda *a, **k: answers.append(a[2]) and False)
    panel.regenerate()
    assert "no captioner here wrote" in answers[0] and not panel.client.jobs()
    assert read_captions(folder / "scene-00000.png") == ["typed by a person"]
    monkeypatch.setattr(plain_text, "ask", lambda *a, **k: True)
    panel.regenerate()
    qtbot.waitUntil(lambda: read_captions(folder / "scene-00000.png") != ["typed by a person"], timeout=120_000)
    qtbot.waitUntil(lambda: panel.editor.lines() == read_captions(folder / "scene-00000.png"))


def test_filters_find_replace_with_one_undo_and_export(window, panel, qtbot, tmp_path, monkeypatch):
    from app import caption_dialogs

    folder = scene_folder(tmp_path / "scenes", 12, captions=True)
    (folder / "scene-00011.txt").unlink()
    panel.open_folder(folder)
    panel.set_status("approved", "scene-00000.png")
    panel.set_status("approved", "scene-00001.png")
    panel.filter_status.setCurrentIndex(panel.filter_status.findData("approved"))
    qtbot.waitUntil(lambda: panel.model.all == ["scene-00000.png", "scene-00001.png"])
    panel.filter_status.setCurrentIndex(0)
    panel.filter_uncaptioned.setChecked(True)
    qtbot.waitUntil(lambda: panel.model.all == ["scene-00011.png"])
    panel.filter_uncaptioned.setChecked(False)
    panel.filter_text.setText("circ.e")
    panel.filter_regex.setChecked(True)
    with_circles = [i for i in panel.dataset.images if any("circle" in c for c in panel.dataset.captions(i))]
    qtbot.waitUntil(lambda: panel.model.all == with_circles)
    panel.filter_text.setText("")

    before = {i: read_captions(folder / i) for i in panel.dataset.images}

    def run_dialog(dialog):
        dialog.find.setText("circle")
        dialog.replace.setText("disc")
        dialog.preview()
        assert f"{len(with_circles)} images would change" in dialog.summary.text()
        assert "disc" in dialog.preview_text.toPlainText()
        assert all(read_captions(folder / i) == before[i] for i in before)  # a preview writes nothing
        return True

    monkeypatch.setattr(caption_dialogs.FindReplaceDialog, "exec", run_dialog)
    panel.find_replace()
    for image in with_circles:
        assert "disc" in " ".join(read_captions(folder / image)) and "circle" not in " ".join(read_captions(folder / image))
    window.undo()  # one undo for the whole replacement
    assert all(read_captions(folder / i) == before[i] for i in before)

    from trainer.config import DatasetConfig
    from trainer.datasets import read_dataset

    for fmt, target in (("txt", tmp_path / "out-txt"), ("imagefolder", tmp_path / "out-hf"),
                        ("jsonl", tmp_path / "out.jsonl")):
        counts = panel.dataset.export(fmt, target, approved_only=(fmt == "txt"))
        items, report = read_dataset(DatasetConfig(path=str(target)), 0)
        if fmt == "txt":
            assert counts["images"] == 2 and {i.image.name for i in items} == {"scene-00000.png", "scene-00001.png"}
        else:
            assert counts["images"] == 11 and counts["left_out_uncaptioned"] == 1
            assert {i.image.name for i in items} == {f"scene-{n:05d}.png" for n in range(11)}
        assert items[0].captions[0] in before[items[0].image.name]


def test_empty_and_read_only_folders_and_broken_images_say_so(window, panel, qtbot, tmp_path):
    from filesystems import mount_tmpfs, unmount_tmpfs

    (tmp_path / "empty").mkdir()
    panel.open_folder(tmp_path / "empty")
    assert panel.notice.isVisible() and "No images in" in panel.notice.text()
    folder = scene_folder(tmp_path / "scenes", 3, captions=True)
    (folder / "broken.png").write_bytes(b"not a png")
    panel.open_folder(folder)
    qtbot.waitUntil(lambda: "1 images cannot be read" in panel.notice.text())
    assert "broken.png (not an image Pillow can read)" in panel.notice.text()
    readonly = tmp_path / "ro"
    if not mount_tmpfs(readonly, "size=1m"):
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        scene_folder(readonly / "scenes", 2, captions=True)
        subprocess.run(["mount", "-o", "remount,ro", str(readonly)], check=True)
        panel.open_folder(readonly / "scenes")
        assert "read-only for you" in panel.notice.text()
        assert panel.editor.text.isReadOnly() and not panel.caption_button.isEnabled()
        assert panel.editor.lines() == read_captions(readonly / "scenes" / "scene-00000.png")
    finally:
        panel.show_dataset(None)
        unmount_tmpfs(readonly)


def test_a_killed_app_keeps_what_was_typed(tmp_path):
    folder = scene_folder(tmp_path / "scenes", 2, captions=True)
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from PySide6.QtCore import QTimer
        from PySide6.QtWidgets import QApplication
        from app.main_window import MainWindow

        if __name__ == "__main__":
            app = QApplication([])
            window = MainWindow(device="cpu")
            window.show()
            window.tabs.setCurrentWidget(window.caption)
            window.caption.open_folder(Path({str(folder)!r}))
            editor = window.caption.editor.text
            editor.setFocus()
            editor.moveCursor(editor.textCursor().MoveOperation.End)
            editor.insertPlainText(" typed just before the crash")
            QTimer.singleShot(900, lambda: os.kill(os.getpid(), signal.SIGKILL))  # no chance to save on exit
            app.exec()
    """)
    env = {**os.environ, "LUMINA_STUDIO_HOME": str(tmp_path / "home"), "QT_QPA_PLATFORM": "offscreen"}
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, timeout=120, capture_output=True,
                            text=True)
    assert result.returncode == -9, result.stderr[-2000:]
    assert read_captions(folder / "scene-00000.png")[-1].endswith("typed just before the crash")


def test_a_selected_thumbnail_keeps_its_colours(window, panel, qtbot, tmp_path):
    from PIL import Image

    folder = tmp_path / "black"
    folder.mkdir()
    Image.new("RGB", (64, 64), (15, 15, 15)).save(folder / "night.png")
    panel.open_folder(folder)
    index = panel.model.index(0)
    panel.list.setCurrentIndex(index)
    qtbot.waitUntil(lambda: panel.model.loader.get(str(folder / "night.png"), panel.list.iconSize().width())
                    is not None)
    panel.list.viewport().update()
    rect = panel.list.visualRect(index)
    # Qt's default tints a selected item's picture with the selection colour (black showed navy)
    picture = panel.list.viewport().grab().toImage().pixelColor(rect.left() + 12, rect.center().y())
    assert panel.list.selectionModel().isSelected(index)
    assert (picture.red(), picture.green(), picture.blue()) == (15, 15, 15)
