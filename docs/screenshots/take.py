"""Take the README's screenshots of the real app with the built-in demo model (run under Xvfb):

    xvfb-run -s "-screen 0 1400x900x24" .venv/bin/python docs/screenshots/take.py [--only caption|train|memory]
"""

import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
os.environ["LUMINA_STUDIO_HOME"] = tempfile.mkdtemp(prefix="lumina-shots-")

from PySide6.QtWidgets import QApplication  # noqa: E402

PROMPTS = ["a red circle on the left, white background", "a blue square above a yellow triangle, black background",
           "a large green triangle in the centre of a light gray background", "a pink circle to the right of a cyan square",
           "A small orange square at the top of the image.", "dark gray background with a purple circle on the bottom"]


def wait(app, condition, timeout=300.0):
    end = time.time() + timeout
    while not condition():
        app.processEvents()
        time.sleep(0.02)
        if time.time() > end:
            raise TimeoutError


def shoot(app, widget, name: str, seconds: float = 1.5) -> None:
    """NAME-light.png and NAME-dark.png of `widget`."""
    from app.main_window import apply_theme

    for theme in ("light", "dark"):
        apply_theme(app, theme)
        settle(app, seconds)
        widget.grab().save(str(HERE / f"{name}-{theme}.png"))


def settle(app, seconds=1.5):
    """Let thumbnails decode and the window repaint."""
    end = time.time() + seconds
    while time.time() < end:
        app.processEvents()
        time.sleep(0.02)


def caption_shots(app):
    """The Caption tab on a folder of scenes the demo captioner has just captioned, a few reviewed."""
    from app.main_window import MainWindow
    from core.captioning.messages import Summary
    from core.scenes.world import write_dataset

    folder = Path(tempfile.mkdtemp(prefix="lumina-shots-scenes-")) / "shapes"
    write_dataset(folder, 40, seed=21)
    for txt in folder.glob("*.txt"):
        txt.unlink()
    window = MainWindow(device="cpu")
    window.resize(1280, 860)
    window.show()
    window.tabs.setCurrentWidget(window.caption)
    panel = window.caption
    panel.open_folder(folder)
    for name, box in panel.styles.items():
        box.setChecked(name in ("detailed", "tags"))
    done = []
    panel.client.result.connect(lambda event: done.append(1) if isinstance(event.data, Summary) else None)
    panel.caption_requested()
    wait(app, lambda: bool(done))
    for _ in range(3):
        panel.approve_and_next()
    panel.set_status("rejected")
    panel.move(1)
    panel.set_status("needs fixing")
    panel.move(1)
    shoot(app, window, "caption")
    panel.client.stop()
    window.client.stop()
    window.close()


@contextlib.contextmanager
def scripted_gpus(*gpus: tuple[str, int]):
    """nvidia-smi answering with these GPUs (name, MiB) while the wizard asks, for the hardware page's shot."""
    folder = Path(tempfile.mkdtemp(prefix="lumina-shots-gpus-"))
    rows = "\n".join(f"{i}, {name}, {mib}" for i, (name, mib) in enumerate(gpus))
    (folder / "nvidia-smi").write_text(f"#!/bin/sh\ncat <<'ROWS'\n{rows}\nROWS\n")
    (folder / "nvidia-smi").chmod(0o755)
    path = os.environ["PATH"]
    os.environ["PATH"] = f"{folder}{os.pathsep}{path}"
    try:
        yield
    finally:
        os.environ["PATH"] = path


def train_shots(app):
    """The wizard (its stages and review pages) and the monitor of a real CPU fine-tune of the demo model: the
    plot with its validation loss, the checkpoints list and the comparison grid."""
    from app.main_window import MainWindow
    from app.train_wizard import TrainWizard
    from core.scenes.world import write_dataset

    folder = Path(tempfile.mkdtemp(prefix="lumina-shots-train-")) / "shapes"
    write_dataset(folder, 120, seed=4)  # 100 images or more: 5% are held out for the validation loss
    window = MainWindow(device="cpu")
    window.resize(1280, 860)
    window.show()
    window.tabs.setCurrentWidget(window.train)
    with scripted_gpus(("NVIDIA GeForce RTX 4090", 24564), ("NVIDIA GeForce RTX 3060", 12288)):
        wizard = TrainWizard(dataset=folder, parent=window)
    wizard.show()
    for _ in range(3):
        wait(app, wizard.currentPage().isComplete, 60)
        wizard.next()
    shoot(app, wizard, "train-wizard", 0.5)
    wait(app, wizard.currentPage().isComplete, 60)
    wizard.next()
    hardware = wizard.currentPage()
    shoot(app, wizard, "train-hardware", 0.5)
    hardware.device.setCurrentIndex(hardware.device.findData("cpu"))  # this machine trains on its CPU
    for _ in range(2):
        wait(app, wizard.currentPage().isComplete, 60)
        wizard.next()
    wait(app, wizard.currentPage().isComplete, 300)
    shoot(app, wizard, "train-review", 0.5)
    wizard.accept()
    run_folder, _ = wizard.launched
    panel = window.train
    panel.select_run(run_folder)
    wait(app, lambda: (panel.refresh_monitor() or True) and panel.run.state() == "finished", 900)
    panel.alignment.prompts = 30
    kept = {c.name for c in panel.run.checkpoints.glob("step-*")}
    panel.measure_alignment()
    wait(app, lambda: set(panel.alignment.scores(panel.run)) == {"base model"} | kept, 900)
    panel.refresh_runs()
    shoot(app, window, "train")
    panel.details.setCurrentIndex(1)  # the Checkpoints tab
    shoot(app, window, "train-checkpoints")
    compared = panel.compare_checkpoints()
    wait(app, lambda: not compared.busy, 900)
    shoot(app, compared, "train-compare")
    compared.close()
    again = TrainWizard(dataset=folder, parent=window)  # the start page, with a run behind it
    again.show()
    again.currentPage().from_earlier.setChecked(True)
    wait(app, again.currentPage().isComplete, 60)
    shoot(app, again, "train-start", 0.5)
    again.reject()
    window.client.stop()
    window.close()


def memory_shots(app):
    """The hardware page with the 2.6B model's shape (no weights) on one 12 GB card, after Fit to my GPU."""
    from app.main_window import MainWindow
    from app.train_wizard import TrainWizard
    from core.models.registry import add_model
    from core.models.scaffold import build_model_folder, full_size_stand_in
    from core.scenes.world import write_dataset

    work = Path(tempfile.mkdtemp(prefix="lumina-shots-memory-"))
    add_model(full_size_stand_in(build_model_folder(work / "small"), work / "lumina-2.6b"), name="Lumina-Image 2.0")
    write_dataset(work / "photos", 16, seed=4)
    window = MainWindow(device="cpu")
    with scripted_gpus(("NVIDIA GeForce RTX 3060", 12288)):
        wizard = TrainWizard(dataset=work / "photos", parent=window)
    wizard.resize(900, 640)
    wizard.show()
    for _ in range(2):
        wait(app, wizard.currentPage().isComplete, 60)
        wizard.next()
    model_page = wizard.currentPage()
    model_page.model.setCurrentIndex(model_page.model.findData("Lumina-Image 2.0"))
    wait(app, model_page.isComplete, 60)
    wizard.next()
    wizard.config["stages"] = [dict(wizard.config["stages"][0], name="high-res", resolution=1024, batch_size=16,
                                    micro_batch_size=1)]
    wizard.currentPage().initializePage()
    wait(app, wizard.currentPage().isComplete, 60)
    wizard.next()
    hardware = wizard.currentPage()
    hardware.device.setCurrentIndex(hardware.device.findData("cuda"))
    hardware.fit_button.click()
    shoot(app, wizard, "train-memory", 0.5)
    wizard.reject()
    window.client.stop()
    window.close()


def main():
    from app.main_window import MainWindow, apply_theme
    from app.model_manager import ModelManager
    from core.storage import library_dir

    app = QApplication([])
    window = MainWindow(device="cpu")
    window.resize(1280, 820)
    window.show()
    wait(app, lambda: bool(window.client.info))
    for index, prompt in enumerate(PROMPTS):
        window.generate.apply_values({"prompt": prompt, "seed_mode": "fixed", "seed": 11 + index, "count": 1})
        window.generate.request_generation()
        wait(app, lambda: not window.client.busy)
    from core.models.registry import add_model
    from core.models.scaffold import build_model_folder

    # Registered only now, so the shots above show the demo model the app starts with.
    add_model(build_model_folder(Path(tempfile.mkdtemp()) / "tiny1"), name="tiny (test model)")
    for theme in ("light", "dark"):
        apply_theme(app, theme)
        for tab, name in ((window.generate, "generate"), (window.gallery, "gallery")):
            window.tabs.setCurrentWidget(tab)
            settle(app)
            window.grab().save(str(HERE / f"{name}-{theme}.png"))
        models = ModelManager(window)
        models.show()
        settle(app, 0.5)
        models.grab().save(str(HERE / f"models-{theme}.png"))
        models.close()
    window.close()
    window.client.stop()

    # A damaged index, for real: garbage over library.sqlite's header, then the app opened again.
    index = library_dir() / "library.sqlite"
    index.write_bytes(os.urandom(100) + index.read_bytes()[100:])
    window = MainWindow(device="cpu")
    window.resize(1280, 820)
    window.show()
    wait(app, lambda: "rebuilt from its files" in window.notice.text() and bool(window.client.info))
    window.tabs.setCurrentWidget(window.gallery)
    shoot(app, window, "recovered")
    window.client.stop()
    window.close()
    caption_shots(app)
    train_shots(app)
    memory_shots(app)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--only"]:
        {"caption": caption_shots, "train": train_shots, "memory": memory_shots}[sys.argv[2]](QApplication([]))
    else:
        main()
