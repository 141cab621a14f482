"""App benchmarks: time to a shown window, the longest GUI-thread stall during generation, gallery search.

0. First start: a fresh data folder, the built-in demo model, the form's default backend (auto); from starting
   the process to the first image. Target under 8 s on the 2-core test machine.
1. Launch: from starting the process to the window shown (median of 3 runs, a model registered so the
   engine process starts too, as in real use). Target under 1.5 s on the 2-core test machine.
2. Stall: a 5 ms heartbeat timer in the GUI thread while the engine makes images with previews every
   step; the longest gap between beats. Target under 50 ms.
3. Gallery: 20,000 library entries; time a word search (SQLite FTS5) and the grid's refresh with it, and
   the full listing. Target under 100 ms for search.
4. Caption tab: a folder of 50,000 scene images with captions. Opening it to the first page shown (target
   under 2 s), moving to the next image (GUI time per move, target under 50 ms), a find & replace preview
   over all 50,000 captions (target under 1 s), and the longest GUI-thread gap (5 ms heartbeat) while the
   demo captioner captions 300 of them in its worker (target under 50 ms).
5. Train tab: the runs list over 200 run folders (target under 300 ms), one monitor update of a run with
   100,000 logged steps as 100 more arrive (read, plot, repaint; target under 50 ms), and a CPU fine-tune of
   the demo model launched from the wizard: seconds from Launch to the first loss point (target under 30 s).

    python bench/bench_app.py [--only caption|train|start]     (runs offscreen; writes bench/out/bench_app.json)
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import save_results  # noqa: E402

LAUNCH_PROBE = """
import sys, time
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication
from app.main_window import MainWindow
def main():
    app = QApplication([])
    window = MainWindow(device="cpu")
    window.show()
    def shown():
        print("shown", time.time(), flush=True)
        window.client.stop()
        app.quit()
    QTimer.singleShot(0, shown)
    app.exec()
if __name__ == "__main__":
    main()
"""

FIRST_IMAGE_PROBE = """
import sys, time
from PySide6.QtWidgets import QApplication
from app.main_window import MainWindow
from core.generation.messages import ImageSaved
def main():
    app = QApplication([])
    window = MainWindow(device="cpu")
    window.show()
    def ready(_):
        print("ready", time.time(), flush=True)
        window.generate.apply_values({"prompt": "a red circle in the centre, white background", "steps": 18})
        window.generate.request_generation()
    def image(event):
        if isinstance(event.data, ImageSaved):
            print("image", time.time(), flush=True)
            window.client.stop()
            app.quit()
    window.client.ready.connect(ready)
    window.client.result.connect(image)
    app.exec()
if __name__ == "__main__":
    main()
"""

WORDS = ("red blue green circle square lighthouse fox snow city night portrait forest river mountain cat dog "
         "castle street neon rain sunset ocean flower garden robot dragon").split()


def launch_seconds(home: str, runs: int = 3) -> float:
    probe = Path(tempfile.mkdtemp()) / "probe.py"
    probe.write_text(LAUNCH_PROBE)
    env = {**os.environ, "LUMINA_STUDIO_HOME": home, "PYTHONPATH": str(ROOT)}
    times = []
    for _ in range(runs):
        started = time.time()
        out = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, env=env, timeout=120)
        shown = float(next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("shown")))
        times.append(shown - started)
    return statistics.median(times)


def import_torch_seconds() -> float:
    """A bare `python -c "import torch"`: the reference the start-up figures are measured against."""
    started = time.time()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    return time.time() - started


def first_image_seconds(runs: int = 3) -> dict:
    """Launch to the first demo image on screen on a fresh data folder (the form's default backend, auto), and
    launch to the engine ready on the next start of that folder (a later start), against a bare
    `python -c "import torch"` measured alternately in the same run."""
    probe = Path(tempfile.mkdtemp()) / "first_image.py"
    probe.write_text(FIRST_IMAGE_PROBE)
    first, later, torch_import = [], [], []

    def run(env: dict, mark: str) -> float:
        started = time.time()
        out = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, env=env, timeout=300)
        return float(next(line.split()[1] for line in out.stdout.splitlines() if line.startswith(mark))) - started

    for _ in range(runs):
        env = {**os.environ, "LUMINA_STUDIO_HOME": tempfile.mkdtemp(prefix="lumina-fresh-"), "PYTHONPATH": str(ROOT)}
        first.append(run(env, "image"))
        time.sleep(5)  # the first start measures the other backend in the background; let it settle
        later.append(run(env, "ready"))
        torch_import.append(import_torch_seconds())
    return {"first_image_s": statistics.median(first), "later_start_engine_ready_s": statistics.median(later),
            "import_torch_s": statistics.median(torch_import)}


def cli_generate_seconds(runs: int = 3) -> dict:
    """`lumina-studio generate` with the demo model, wall time, against `import torch` alternately."""
    home = tempfile.mkdtemp(prefix="lumina-cli-")
    env = {**os.environ, "LUMINA_STUDIO_HOME": home, "PYTHONPATH": str(ROOT)}
    generate, torch_import = [], []
    for _ in range(runs):
        started = time.time()
        subprocess.run([sys.executable, "-m", "lumina_studio", "generate", "a red circle on the left, white background",
                        "--out", str(Path(home) / "out")], check=True, capture_output=True, env=env, timeout=300)
        generate.append(time.time() - started)
        torch_import.append(import_torch_seconds())
    median, torch_s = statistics.median(generate), statistics.median(torch_import)
    return {"generate_s": median, "import_torch_s": torch_s, "ratio": round(median / torch_s, 2)}


def stall_ms(home: str) -> dict:
    from PySide6.QtCore import QElapsedTimer, QTimer
    from PySide6.QtWidgets import QApplication

    from app.main_window import MainWindow

    os.environ["LUMINA_STUDIO_HOME"] = home
    app = QApplication.instance() or QApplication([])
    window = MainWindow(device="cpu")
    window.show()
    deadline = time.time() + 120
    while not window.client.info and time.time() < deadline:
        app.processEvents()
        time.sleep(0.01)
    gaps, clock = [], QElapsedTimer()
    clock.start()

    def beat():
        gaps.append(clock.restart())

    heart = QTimer(interval=5, timeout=beat)
    heart.start()
    window.generate.apply_values({"prompt": "a lighthouse at night", "width": 256, "height": 256, "steps": 12,
                                  "seed_mode": "fixed", "seed": 3, "count": 2, "backend": "torch"})
    window.generate.request_generation()
    started = time.time()
    while (window.client.busy or time.time() - started < 1) and time.time() - started < 300:
        app.processEvents()
        time.sleep(0.001)
    heart.stop()
    window.client.stop()
    window.close()
    return {"max_gap_ms": max(gaps[1:]), "median_gap_ms": statistics.median(gaps), "beats": len(gaps),
            "images": window.gallery.model.rowCount()}


def gallery_ms(entries: int = 20_000) -> dict:
    from PySide6.QtWidgets import QApplication

    from app.gallery_panel import GalleryPanel
    from core.library import Library

    QApplication.instance() or QApplication([])
    folder = Path(tempfile.mkdtemp(prefix="lumina-gallery-"))
    library = Library(folder)
    rng = random.Random(0)
    now = time.time()
    rows = [(f"img{i:05d}.png", " ".join(rng.choice(WORDS) for _ in range(12)), rng.choice(["tiny", "lumina"]), i,
             now - i * 60, "{}") for i in range(entries)]
    with library.db:
        library.db.executemany(
            "INSERT INTO images (name, prompt, model, seed, created, settings) VALUES (?, ?, ?, ?, ?, ?)", rows)
    panel = GalleryPanel(library)

    def timed(fn, repeats=5):
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - started))
        return statistics.median(times)

    search = timed(lambda: library.search("lighthouse neon", limit=-1))
    matches = len(library.search("lighthouse neon", limit=-1))

    def refresh_with(text):
        panel.search.blockSignals(True)
        panel.search.setText(text)
        panel.search.blockSignals(False)
        panel.refresh()

    refresh_search = timed(lambda: refresh_with("lighthouse neon"))
    refresh_all = timed(lambda: refresh_with(""))
    panel.resize(1200, 800)
    panel.show()
    app = QApplication.instance()

    def scroll_to_end():  # page by page, as a person scrolling down would make the grid fetch
        refresh_with("")
        while panel.model.canFetchMore():
            panel.grid.scrollToBottom()
            app.processEvents()

    page_size = panel.model.PAGE
    scroll_page = timed(scroll_to_end, repeats=1) / (entries // page_size)
    panel.loader.stop()
    panel.close()
    library.close()
    return {"entries": entries, "search_ms": search, "matches": matches, "grid_refresh_search_ms": refresh_search,
            "grid_refresh_all_ms": refresh_all, "scroll_ms_per_page": scroll_page, "page_size": page_size}


def scene_folder(count: int) -> Path:
    from core.captioning.files import write_captions
    from core.scenes.captions import describe
    from core.scenes.world import draw, scenes

    folder = Path(tempfile.mkdtemp(prefix="lumina-caption-bench-"))
    pictures = [draw(scene) for scene in scenes(50, 3)]
    for i, scene in enumerate(scenes(count, 4)):
        path = folder / f"scene-{i:06d}.png"
        pictures[i % len(pictures)].save(path, compress_level=1)
        if i >= 300:  # the first 300 are left for the captioner
            write_captions(path, [describe(scene, "detailed")])
    return folder


def caption_panel(home: str, images: int = 50_000) -> dict:
    from PySide6.QtCore import QElapsedTimer, QThreadPool, QTimer
    from PySide6.QtWidgets import QApplication

    from app.main_window import MainWindow
    from core.captioning.messages import Summary

    os.environ["LUMINA_STUDIO_HOME"] = home
    folder = scene_folder(images)
    app = QApplication.instance() or QApplication([])
    window = MainWindow(device="cpu")
    window.show()
    window.tabs.setCurrentWidget(window.caption)
    panel = window.caption
    app.processEvents()
    started = time.perf_counter()
    panel.open_folder(folder)
    app.processEvents()
    first_page = time.perf_counter() - started
    assert panel.model.rowCount() > 0 and panel.current

    def moves(count: int) -> list[float]:
        times = []
        for _ in range(count):
            started = time.perf_counter()
            panel.move(1)
            app.processEvents()
            times.append(1000 * (time.perf_counter() - started))
        return times

    during = moves(50)  # while every caption is still being read in the background
    QThreadPool.globalInstance().waitForDone()
    after = moves(100)
    panel.dataset.load_all()
    started = time.perf_counter()
    changes = panel.dataset.preview_replace("circle", "disc", False, panel.dataset.images)
    preview = time.perf_counter() - started

    gaps, clock = [], QElapsedTimer()
    heart = QTimer(interval=5, timeout=lambda: gaps.append(clock.restart()))
    summaries = []
    panel.client.result.connect(lambda event: summaries.append(event.data) if isinstance(event.data, Summary) else None)
    panel.scope.setCurrentIndex(panel.scope.findData("uncaptioned"))
    started = time.perf_counter()
    panel.caption_requested()
    while not panel.client.info and time.perf_counter() - started < 120:  # the captioner loads
        app.processEvents()
        time.sleep(0.001)
    clock.start()
    heart.start()
    while not summaries and time.perf_counter() - started < 600:
        app.processEvents()
        time.sleep(0.001)
    heart.stop()
    panel.client.stop()
    window.client.stop()
    window.close()
    return {"images": images, "first_page_s": round(first_page, 3),
            "next_image_ms_median": statistics.median(after), "next_image_ms_max": max(after),
            "next_image_during_background_read_ms_median": statistics.median(during),
            "next_image_during_background_read_ms_max": max(during),
            "replace_preview_s": round(preview, 3), "replace_changes": len(changes),
            "captioning_max_gap_ms": max(gaps[1:]), "captioning_median_gap_ms": statistics.median(gaps),
            "captioned": summaries[0]["summary"]["captioned"] if summaries else 0}


def fake_runs(count: int, steps: int) -> None:
    from core.storage import runs_dir
    from trainer.run_folder import RunFolder

    for i in range(count):
        run = RunFolder(runs_dir() / f"run-{i:03d}")
        run.path.mkdir(parents=True)
        run.config.write_text('name = "x"\n[[stages]]\nname = "only"\n')
        run.set_status("stopped", step=steps, total_steps=steps, stage="only", loss=0.1)
        lines = [json.dumps({"event": "step", "step": s, "stage": "only", "loss": 1 / (1 + s), "lr": 1e-4,
                             "grad_norm": 0.5, "samples_per_s": 10.0, "eta_s": 1}) for s in range(1, steps + 1)]
        run.events.write_text("\n".join(lines) + "\n")


def train_tab(home: str) -> dict:
    from PySide6.QtWidgets import QApplication

    from app.main_window import MainWindow
    from app.train_wizard import TrainWizard
    from core.scenes.world import write_dataset
    from core.storage import runs_dir
    from trainer.run_folder import RunFolder

    os.environ["LUMINA_STUDIO_HOME"] = home
    fake_runs(200, 50)
    app = QApplication.instance() or QApplication([])
    window = MainWindow(device="cpu")
    window.show()
    panel = window.train
    started = time.perf_counter()
    window.tabs.setCurrentWidget(panel)  # the first show scans the runs folder
    app.processEvents()
    open_tab = time.perf_counter() - started
    started = time.perf_counter()
    panel.refresh_runs()
    refresh = time.perf_counter() - started

    big = RunFolder(runs_dir() / "run-000")
    big.events.write_text("".join(json.dumps({"event": "step", "step": s, "stage": "only", "loss": 1 / (1 + s)})
                                  + "\n" for s in range(1, 100_001)))
    started = time.perf_counter()
    panel.select_run(big.path)
    panel.plot.repaint()
    select_stall = time.perf_counter() - started
    gaps = []  # the GUI thread's longest pause while the log is read in the background
    while len(panel.plot.steps) < 100_000 and time.perf_counter() - started < 60:
        tick = time.perf_counter()
        app.processEvents()
        panel.plot.repaint()
        gaps.append(time.perf_counter() - tick)
        time.sleep(0.005)
    caught_up = time.perf_counter() - started
    updates = []
    for batch in range(20):
        with big.events.open("a") as handle:
            for s in range(100_001 + batch * 100, 100_001 + (batch + 1) * 100):
                handle.write(json.dumps({"event": "step", "step": s, "stage": "only", "loss": 1 / (1 + s)}) + "\n")
        started = time.perf_counter()
        panel.refresh_monitor()
        panel.plot.repaint()
        updates.append(1000 * (time.perf_counter() - started))

    for path in list(runs_dir().iterdir()):
        import shutil

        shutil.rmtree(path)
    folder = Path(tempfile.mkdtemp()) / "scenes"
    write_dataset(folder, 64, seed=2)
    wizard = TrainWizard(dataset=folder, parent=window)
    wizard.show()

    def until(condition, timeout=300):
        end = time.time() + timeout
        while not condition() and time.time() < end:
            app.processEvents()
            time.sleep(0.02)

    for _ in range(6):
        until(wizard.currentPage().isComplete, 60)
        wizard.next()
    until(wizard.currentPage().isComplete, 300)
    launched = time.perf_counter()
    wizard.accept()
    folder, launcher = wizard.launched
    panel.select_run(folder)
    until(lambda: (panel.refresh_monitor() or True) and len(panel.plot.steps) > 0, 300)
    first_loss = time.perf_counter() - launched
    from app.train_runs import kill

    kill(folder, launcher)
    launcher.wait(60)
    window.client.stop()
    window.close()
    return {"runs": 200, "open_tab_ms": round(1000 * open_tab, 1), "refresh_runs_ms": round(1000 * refresh, 1),
            "monitor_select_100k_stall_ms": round(1000 * select_stall, 1),
            "monitor_catch_up_100k_s": round(caught_up, 2),
            "monitor_catch_up_max_gui_pause_ms": round(1000 * max(gaps, default=0), 1),
            "monitor_update_ms_median": statistics.median(updates), "monitor_update_ms_max": max(updates),
            "first_loss_after_launch_s": round(first_loss, 1)}


def main() -> None:
    import argparse

    from bench_generate import cpu_name

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("caption", "train", "start"), help="run one part")
    args = parser.parse_args()
    if args.only:
        home = tempfile.mkdtemp(prefix="lumina-app-bench-")
        if args.only == "start":
            part = {"fresh_start": first_image_seconds(), "cli_generate": cli_generate_seconds()}
        else:
            part = (caption_panel if args.only == "caption" else train_tab)(home)
        result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{cpu_name()}, {os.cpu_count()} cores",
                  args.only: part}
        print(json.dumps(result, indent=2))
        return

    from core.models.registry import add_model
    from core.models.scaffold import build_model_folder

    home = tempfile.mkdtemp(prefix="lumina-app-bench-")
    os.environ["LUMINA_STUDIO_HOME"] = home
    add_model(build_model_folder(Path(tempfile.mkdtemp()) / "tiny"), name="tiny")
    from app.settings import AppSettings

    settings = AppSettings()
    settings.form = {"backend": "torch"}
    settings.sync()
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores",
        "launch_s": launch_seconds(home),
        "fresh_start": first_image_seconds(),
        "cli_generate": cli_generate_seconds(),
        "stall": stall_ms(home),
        "gallery": gallery_ms(),
        "caption": caption_panel(home),
        "train": train_tab(tempfile.mkdtemp(prefix="lumina-app-bench-")),
    }
    save_results("bench_app", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
