"""The Caption tab's controller alone: no window, the real folder, undo stack and captioner worker."""

from core.captioning.files import read_captions
from core.scenes.world import write_dataset


def test_open_edit_undo_and_caption_without_a_window(qtbot, data_home, tmp_path):
    from app.caption_controller import CaptionController, CaptionerChoice
    from app.settings import AppSettings

    folder = tmp_path / "scenes"
    write_dataset(folder, 3, seed=2, captions=False)
    asked = []
    controller = CaptionController(AppSettings(), "cpu", ask=lambda title, text: asked.append(text) or True)
    changed, notices = [], []
    controller.changed.connect(lambda image, by_editor: changed.append(image))
    controller.notice.connect(lambda text, error: notices.append(text))
    try:
        with qtbot.waitSignal(controller.read, timeout=30_000):  # every caption, read in the background
            assert controller.open_folder(folder)
        assert AppSettings().caption_recent[0] == str(folder) and not notices
        first = controller.dataset.images[0]
        controller.edit_captions(first, ["a caption typed by hand"])
        controller.set_status(first, "approved")
        assert read_captions(folder / first) == ["a caption typed by hand"]
        assert controller.dataset.status_of(first) == "approved" and changed == [first, first]
        controller.undo_stack.undo()
        controller.undo_stack.undo()
        assert read_captions(folder / first) == [] and controller.dataset.status_of(first) == "unreviewed"
        assert not controller.open_folder(tmp_path / "gone") and "is not a folder" in notices[-1]

        with qtbot.waitSignal(controller.idle, timeout=120_000):  # the demo captioner, in its worker process
            assert controller.caption(CaptionerChoice(), ["detailed"], "skip", None, "the whole folder")
        assert all(read_captions(folder / image) for image in controller.dataset.images)
        assert set(changed) >= set(controller.dataset.images) and not asked  # nothing left this computer
    finally:
        controller.stop()
