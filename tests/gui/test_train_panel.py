"""The Train tab: the wizard refuses bad input page by page and launches a config the trainer's --check
accepts; a real `lumina-studio train` of the demo model on scenes is watched, stopped, resumed, finished,
re-attached after the app is reopened and used in Generate; dead and failed runs are shown as such."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialog, QTextBrowser

from app import plain_text
from app.image_view import ImageView
from core.metadata import read_settings
from app.train_wizard import STAGE_FIELDS, name_datasets
from core.models.registry import demo_source
from core.scenes.world import write_dataset
from fake_gpus import fake_nvidia_smi
from filesystems import mount_tmpfs, unmount_tmpfs
from core.storage import runs_dir
from trainer.events import StageStart, Step, Validation
from core.processes import start_time
from trainer.run_folder import RunFolder


STAGE_STEPS = 30  # each of the demo preset's two stages, in the end-to-end test


def scenes(folder: Path, count: int = 48) -> Path:
    write_dataset(folder, count, seed=9)
    return folder


def wizard_for(window, dataset: Path | None):
    from app.train_wizard import TrainWizard

    wizard = TrainWizard(dataset=dataset, parent=window)
    wizard.show()
    return wizard


def advance(wizard, qtbot, pages: int) -> None:
    for _ in range(pages):
        page = wizard.currentPage()
        qtbot.waitUntil(page.isComplete, timeout=30_000)
        wizard.next()


def refused(page, qtbot, text: str) -> None:
    qtbot.waitUntil(lambda: not page.isComplete() and text in page.problem.text(), timeout=30_000)


def test_each_wizard_page_refuses_its_bad_inputs(window, qtbot, tmp_path):
    uncaptioned = tmp_path / "uncaptioned"
    write_dataset(uncaptioned, 4, seed=1)
    for txt in uncaptioned.glob("*.txt"):
        txt.unlink()
    wizard = wizard_for(window, None)
    start = wizard.currentPage()
    start.name.setText("bad/name")
    refused(start, qtbot, "without /")
    start.name.setText("good-name")
    advance(wizard, qtbot, 1)

    data = wizard.currentPage()
    refused(data, qtbot, "does not exist")  # the preset's placeholder folder
    data.list.clear()
    data._sync()
    refused(data, qtbot, "Add at least one dataset")
    data.list.addItem(str(uncaptioned))
    data._sync()
    refused(data, qtbot, "has no image with a caption")
    data.list.clear()
    data.list.addItem(str(scenes(tmp_path / "scenes", 8)))
    data._sync()
    qtbot.waitUntil(data.isComplete, timeout=30_000)
    report = data.report.toPlainText()  # the trainer's own report, as `train --check` prints it
    assert "8 usable, 0 skipped" in report and "stage 'scenes-64px' buckets: 64x64: 8" in report
    assert "fewer images than the micro-batch" in report  # 8 images, micro-batch 16
    advance(wizard, qtbot, 1)

    model = wizard.currentPage()
    model.model.addItem("not-a-model", "not-a-model")
    model.model.setCurrentIndex(model.model.count() - 1)
    refused(model, qtbot, "Model not found")
    other = tmp_path / "other-model"  # a diffusers folder whose transformer is not Lumina's
    shutil.copytree(demo_source().components, other)
    config = json.loads((other / "transformer" / "config.json").read_text())
    (other / "transformer" / "config.json").write_text(json.dumps({**config, "_class_name": "SD3Transformer2DModel"}))
    model.model.addItem(str(other), str(other))
    model.model.setCurrentIndex(model.model.count() - 1)
    refused(model, qtbot, "holds a SD3Transformer2DModel, not a Lumina-Image 2.0 DiT")
    model.model.setCurrentIndex(model.model.findData("demo"))
    advance(wizard, qtbot, 1)

    stages = wizard.currentPage()
    column = {name: i for i, (name, _) in enumerate(STAGE_FIELDS)}

    def set_cell(row, field, text):
        stages.table.item(row, column[field]).setText(text)

    # the trainer's own rules, each named by the table's row and column
    for field, text, message in (("steps", "0", "Stage 1, Steps"), ("batch_size", "12", "not a multiple"),
                                 ("lr", "nan", "Stage 1, Learning rate"), ("lr", "-1", "Stage 1, Learning rate"),
                                 ("steps", "ten", "Stage 1, Steps: 'ten' is not a whole number")):
        original = stages.table.item(0, column[field]).text()
        set_cell(0, field, text)
        refused(stages, qtbot, message)
        set_cell(0, field, original)
    stages._add()
    last = stages.table.rowCount() - 1
    set_cell(last, "resolution", "32")  # smaller than the stage before
    refused(stages, qtbot, f"Stage {last + 1}, Resolution")
    stages.table.selectRow(last)
    stages._remove()
    advance(wizard, qtbot, 1)

    hardware = wizard.currentPage()
    if not hardware.gpus_found:
        hardware.device.setCurrentIndex(hardware.device.findData("cuda"))
        refused(hardware, qtbot, "No GPU was found")
        hardware.device.setCurrentIndex(hardware.device.findData("cpu"))
    advance(wizard, qtbot, 1)

    samples = wizard.currentPage()
    samples.prompts.setPlainText("")
    refused(samples, qtbot, "there is no sample prompt")
    samples.prompts.setPlainText("a lighthouse at dusk")  # allowed, but the demo model draws nothing of it
    qtbot.waitUntil(samples.isComplete)
    assert "does not know: lighthouse, dusk" in samples.words.text()
    samples.prompts.setPlainText("a red circle on the left")
    qtbot.waitUntil(lambda: samples.isComplete() and samples.words.text() == "")
    assert "free in" in samples.disk.text()
    wizard.reject()
    assert not (runs_dir() / "good-name").exists()  # a cancelled wizard leaves no folder


def test_stages_name_their_datasets_and_keep_what_the_table_does_not_show(window, qtbot, tmp_path):
    from app.train_wizard import PRESETS

    # the authors' preset trains its last stage on a dataset named "hq"; the folder handed over (as "Train on
    # this dataset" does) replaces its datasets, so every stage trains on that folder
    wizard = wizard_for(window, scenes(tmp_path / "scenes", 8))
    start = wizard.currentPage()
    start.preset.setCurrentIndex(start.preset.findData(str(PRESETS / "authors-256-1024-hq.toml")))
    advance(wizard, qtbot, 2)
    model = wizard.currentPage()
    model.model.setCurrentIndex(model.model.findData("demo"))
    advance(wizard, qtbot, 1)
    stages = wizard.currentPage()
    column = [name for name, _ in STAGE_FIELDS].index("datasets")
    assert [stages.table.item(row, column).text() for row in range(3)] == ["", "", ""]
    assert wizard.config["datasets"][0]["name"] == "scenes"
    assert "(scenes)" in stages.table.horizontalHeaderItem(column).toolTip()  # the names to choose from
    stages.table.item(2, column).setText("hq")
    refused(stages, qtbot, "Stage 3, Datasets (blank: all): no dataset is named 'hq'")
    stages.table.item(2, column).setText("scenes")
    stages.table.item(2, 0).setText("polish")
    qtbot.waitUntil(lambda: "no dataset is named" not in stages.problem.text())
    last = wizard.config["stages"][2]  # an edited row keeps what the table has no column for
    assert last["name"] == "polish" and last["datasets"] == ["scenes"] and last["system_prompt"] == "dataset"
    wizard.reject()
    config = {"datasets": [{"path": "/a/photos"}, {"path": "/b/photos"}], "stages": [{"datasets": ["photos-2", "gone"]}]}
    name_datasets(config)  # two folders of one name, as the datasets page adds them
    assert [d["name"] for d in config["datasets"]] == ["photos", "photos-2"]
    assert config["stages"][0]["datasets"] == ["photos-2"]


def test_the_dataset_check_can_be_stopped_and_run_again(window, qtbot, tmp_path):
    wizard = wizard_for(window, scenes(tmp_path / "many", 300))
    advance(wizard, qtbot, 1)
    data = wizard.currentPage()
    assert data.result == "checking" and data.stop_button.isEnabled()
    data.stop_check()
    refused(data, qtbot, "The check was stopped")
    assert data.check_button.isEnabled() and not data.stop_button.isEnabled()
    data.check()
    qtbot.waitUntil(data.isComplete, timeout=60_000)
    assert "300 usable" in data.report.toPlainText()
    data.check()
    wizard.reject()  # closing the wizard stops a check still running
    qtbot.waitUntil(lambda: data.result != "checking", timeout=30_000)


def test_start_page_offers_only_what_there_is_and_names_runs_afresh(window, qtbot):
    wizard = wizard_for(window, None)
    start = wizard.currentPage()  # nothing trained yet: only "from a preset", and the others say why
    assert not start.from_earlier.isEnabled() and start.earlier.placeholderText() == "no earlier run yet"
    assert not start.resume.isEnabled() and start.resumable.placeholderText() == "no stopped or interrupted run"
    assert start.name.text().startswith("demo-scenes-64-") and start.isComplete()
    wizard.reject()
    earlier = fake_run("demo-scenes-64-20261130-0912", "finished", None, checkpoint=True)
    earlier.config.write_text(earlier.config.read_text().replace('name = "x"', f'name = "{earlier.path.name}"'))
    minutes = [time.strftime("%Y%m%d-%H%M", time.localtime(time.time() + ahead)) for ahead in (0, 60)]
    for minute in minutes:  # runs already launched under this minute's (and the next one's) default name
        (runs_dir() / f"demo-scenes-64-{minute}").mkdir()
    wizard = wizard_for(window, None)
    start = wizard.currentPage()
    start.from_earlier.setChecked(True)
    assert start.earlier.currentData() == str(earlier.config)
    # the earlier run's own date is replaced, not kept, and a taken name gets a number
    assert start.name.text() in {f"demo-scenes-64-{minute}-2" for minute in minutes}, start.name.text()
    # the same name as the preset gave (no textChanged) still replaces the earlier run's, which is taken
    assert wizard.config["name"] == start.name.text() and start.isComplete()
    wizard.reject()


def test_start_page_refuses_a_taken_name_and_a_read_only_runs_folder(window, qtbot):
    fake_run("taken", "stopped", None, checkpoint=False)
    wizard = wizard_for(window, None)
    start = wizard.currentPage()
    start.name.setText("taken")
    refused(start, qtbot, "A run named taken exists already")
    wizard.reject()
    assert (runs_dir() / "taken" / "config.toml").is_file()  # cancelling never removes a real run
    shutil.rmtree(runs_dir())
    if not mount_tmpfs(runs_dir(), "ro"):
        pytest.skip("mounting a read-only file system needs root")
    try:
        wizard = wizard_for(window, None)
        wizard.currentPage().name.setText("fresh")
        refused(wizard.currentPage(), qtbot, "Cannot write in")
        wizard.reject()
    finally:
        unmount_tmpfs(runs_dir())


def test_samples_page_refuses_when_checkpoints_do_not_fit_the_disk(window, qtbot, tmp_path):
    dataset = scenes(tmp_path / "scenes", 8)
    if not mount_tmpfs(runs_dir(), "size=256k"):
        pytest.skip("mounting a small file system needs root")
    try:
        wizard = wizard_for(window, dataset)
        advance(wizard, qtbot, 5)
        samples = wizard.currentPage()
        refused(samples, qtbot, "Not enough disk space")
        assert "Keep fewer checkpoints" in samples.problem.text()
        wizard.reject()
    finally:
        unmount_tmpfs(runs_dir())


def test_start_page_resumes_a_stopped_run(window, qtbot):
    fake_run("halted", "stopped", None, checkpoint=True)
    fake_run("never-saved", "stopped", None, checkpoint=False)
    wizard = wizard_for(window, None)
    start = wizard.currentPage()
    assert [start.resumable.itemData(i) for i in range(start.resumable.count())] == [str(runs_dir() / "halted")]
    start.resume.setChecked(True)
    qtbot.waitUntil(start.isComplete)
    assert start.nextId() == -1 and wizard.buttonText(wizard.WizardButton.FinishButton) == "Resume"
    wizard.accept()
    folder, process = wizard.launched
    assert folder == runs_dir() / "halted" and "--resume" in process.args
    process.wait(120)
    # the real trainer ran: this scripted folder has no plan.json, and it says so
    assert "not a training run folder" in (folder / "launcher.log").read_text()


def test_hardware_page_ticks_gpus_and_refuses_a_stage_over_memory(window, qtbot, tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path / "bin", monkeypatch, [("NVIDIA Big", 24576), ("NVIDIA Small", 1024)])
    wizard = wizard_for(window, scenes(tmp_path / "scenes", 8))
    advance(wizard, qtbot, 4)
    hardware = wizard.currentPage()
    assert [box.text() for box in hardware.gpu_boxes] == ["GPU 0: NVIDIA Big, 24 GiB", "GPU 1: NVIDIA Small, 1 GiB"]
    hardware.device.setCurrentIndex(hardware.device.findData("cuda"))
    for box in hardware.gpu_boxes:
        box.setChecked(False)
    refused(hardware, qtbot, "Choose at least one GPU")
    hardware.gpu_boxes[1].setChecked(True)  # the demo needs ~1.5 GB with the CUDA context: over 1 GiB
    refused(hardware, qtbot, "needs about")
    assert "lower its micro-batch" in hardware.problem.text() and "#c83c3c" in hardware.estimate.text()
    hardware.gpu_boxes[1].setChecked(False)
    hardware.gpu_boxes[0].setChecked(True)
    qtbot.waitUntil(hardware.isComplete)
    assert "against GPU 0" in hardware.estimate.text() and wizard.gpu_args() == ["--gpu-ids", "0"]
    hardware.gpu_boxes[1].setChecked(True)
    refused(hardware, qtbot, "GPU 1 has 1 GiB")  # the smallest chosen GPU decides, as FSDP needs it
    hardware.device.setCurrentIndex(hardware.device.findData("cpu"))
    qtbot.waitUntil(hardware.isComplete)
    assert wizard.gpu_args() == [] and not hardware.gpu_boxes[0].isEnabled()
    assert "against this computer's memory" in hardware.estimate.text()
    monkeypatch.setattr("app.train_wizard.ram_size", lambda: 64 * 2**20)  # a computer with 64 MiB
    hardware.device.setCurrentIndex(hardware.device.findData("cuda"))
    hardware.device.setCurrentIndex(hardware.device.findData("cpu"))
    refused(hardware, qtbot, "this computer has 64 MiB")
    wizard.reject()


def test_fit_to_my_gpu_chooses_a_memory_mode_for_the_full_model_on_a_12_gb_card(window, qtbot, tmp_path,
                                                                               monkeypatch, full_size_model):
    from core.models.registry import add_model

    fake_nvidia_smi(tmp_path / "bin", monkeypatch, [("NVIDIA GeForce RTX 3060", 12288)])
    add_model(full_size_model, name="full-size")
    wizard = wizard_for(window, scenes(tmp_path / "scenes", 8))
    advance(wizard, qtbot, 2)
    page = wizard.currentPage()
    page.model.setCurrentIndex(page.model.findData("full-size"))
    advance(wizard, qtbot, 1)
    stages = wizard.currentPage()
    wizard.config["stages"] = [dict(wizard.config["stages"][0], resolution=1024, batch_size=4, micro_batch_size=1)]
    stages.initializePage()
    advance(wizard, qtbot, 1)
    hardware = wizard.currentPage()
    hardware.device.setCurrentIndex(hardware.device.findData("cuda"))
    refused(hardware, qtbot, "would fit")  # today's settings need ~81 GiB; the page names the mode that fits
    assert "bf16 weights, Adafactor, fused backward, EMA on the CPU would fit" in hardware.problem.text()
    items = [hardware.mode.itemText(i) for i in range(hardware.mode.count())]
    assert items[0] == "fp32 weights, AdamW, EMA: about 57.4 GiB, too big (with activation checkpointing on)"
    assert not wizard.config["activation_checkpointing"]  # the demo preset's: a tiny model needs none
    assert [", fits" in item for item in items] == [False] * 5 + [True, True]  # the last swaps blocks too
    assert hardware.mode.currentIndex() == 0 and "reference" in hardware.mode_note.text()
    qtbot.mouseClick(hardware.fit_button, Qt.LeftButton)
    qtbot.waitUntil(hardware.isComplete)
    assert wizard.config["memory"] == {"weights": "bf16", "ema_on_cpu": True, "fused_backward": True}
    assert wizard.config["optimizer"]["name"] == "adafactor"
    assert (wizard.config["stages"][0]["batch_size"], wizard.config["stages"][0]["micro_batch_size"]) == (1, 1)
    assert wizard.config["activation_checkpointing"]
    assert hardware.mode.currentIndex() == 5 and "no gradient accumulation" in hardware.mode_note.text()
    assert "Changed with it: activation checkpointing on; stage 'scenes-64px': batch 1" in hardware.mode_note.text()
    assert "#c83c3c" not in hardware.estimate.text()
    hardware.mode.setCurrentIndex(0)
    hardware.mode.activated.emit(0)  # back to today's settings, as a person picking it from the list
    refused(hardware, qtbot, "would fit")
    assert wizard.config["memory"] == {} and wizard.config["optimizer"]["name"] == "adamw"
    wizard.reject()


def test_hardware_page_estimates_a_single_file_base_model(window, qtbot, tmp_path, tiny_model):
    from core.models.checkpoints import original_layout, read_state_dict
    from core.models.registry import add_model

    # the tiny model's DiT as an all-in-one ComfyUI file: its text encoder's tensors are not the DiT's memory
    state = read_state_dict(tiny_model / "transformer" / "diffusion_pytorch_model.safetensors")
    state = {"model.diffusion_model." + name: tensor for name, tensor in original_layout(state).items()}
    state["text_encoders.gemma2_2b.embed.weight"] = torch.zeros(4096, 1024)
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(tmp_path / "lumina_2.safetensors"))
    add_model(tmp_path / "lumina_2.safetensors", name="all-in-one", components=tiny_model)
    shown = {}
    for model in ("tiny", "all-in-one"):  # the home fixture registers the folder as "tiny"
        wizard = wizard_for(window, scenes(tmp_path / "scenes", 8))
        advance(wizard, qtbot, 2)
        page = wizard.currentPage()
        page.model.setCurrentIndex(page.model.findData(model))
        advance(wizard, qtbot, 2)
        shown[model] = wizard.currentPage().estimate.text()
        wizard.reject()
    assert "about" in shown["tiny"] and shown["all-in-one"] == shown["tiny"]


def test_wizard_to_a_finished_checkpoint_in_generate(real_window, qtbot, tmp_path, monkeypatch):
    from app.main_window import MainWindow

    window = real_window
    window.tabs.setCurrentWidget(window.train)
    wizard = wizard_for(window, scenes(tmp_path / "scenes"))
    advance(wizard, qtbot, 3)
    stages = wizard.currentPage()  # shorter stages than the preset's two of 100 steps: the same path, sooner
    columns = [name for name, _ in STAGE_FIELDS]
    for row in range(2):
        for field, value in (("steps", STAGE_STEPS), ("sample_every", STAGE_STEPS), ("checkpoint_every", STAGE_STEPS),
                             ("batch_size", 8), ("micro_batch_size", 8)):
            stages.table.item(row, columns.index(field)).setText(str(value))
    advance(wizard, qtbot, 3)
    review = wizard.currentPage()
    qtbot.waitUntil(review.isComplete, timeout=120_000)  # the trainer's own --check passed
    assert "The config and datasets are fine" in review.output.toPlainText()
    assert "lumina-studio train" in review.command.text() and "--run-dir" in review.command.text()
    checked = subprocess.run([sys.executable, "-m", "lumina_studio", "train", str(wizard.config_path), "--check"],
                             capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0, checked.stderr
    launched_at = time.time()
    wizard.accept()
    folder = wizard.launched[0]
    window.train.select_run(folder)
    panel = window.train

    def shows(condition, timeout=300):
        qtbot.waitUntil(lambda: (panel.refresh_monitor() or True) and condition(), timeout=timeout * 1000)

    shows(lambda: len(panel.plot.steps) > 0, 120)
    first_loss = time.time() - launched_at
    assert first_loss < 120  # the target on an idle 2-core machine is 30 s (bench_app.py records it)
    assert math.isfinite(panel.plot.values["loss"][0])

    # The app is closed mid-run and opened again: the run goes on and the new window re-attaches.
    window.close()
    again = MainWindow(device="cpu")
    qtbot.addWidget(again, before_close_func=lambda w: (w.client.stop(), w.caption.client.stop()))
    again.show()
    again.tabs.setCurrentWidget(again.train)
    again.train.refresh_runs()
    assert again.train.runs.rowCount() == 1 and again.train.runs.item(0, 1).text() in ("preparing", "running")
    again.train.runs.selectRow(0)
    panel = again.train
    shows(lambda: panel.samples.count() >= 2)  # the samples at the end of the first stage
    assert panel.sample_button.isEnabled() and panel.save_button.isEnabled()
    # samples are drawn as Generate draws with this model: its sampling_defaults.json (cfg-trunc 1, renorm 0)
    sample = read_settings(panel.samples.item(0).data(Qt.UserRole))
    assert (sample["cfg_trunc"], sample["cfg_renorm"]) == (1.0, 0.0)
    panel.loader.cache.clear()  # the first click on a sample whose large image is not decoded yet
    panel._enlarge_sample(panel.samples.item(0))
    dialog = panel.findChildren(QDialog)[-1]
    [view] = dialog.findChildren(ImageView)
    qtbot.waitUntil(lambda: view.has_image(), timeout=10_000)
    details = dialog.findChildren(QTextBrowser)[0].toPlainText()
    assert "CFG truncation: 1.0" in details and "model_hash" not in details
    dialog.close()
    panel.stop_run()
    shows(lambda: panel.run.state() == "stopped" and panel.resume_button.isEnabled())
    assert not panel.sample_button.isEnabled()
    assert "stopped" in panel.headline.text()
    panel.resume_run()
    shows(lambda: panel.run.state() == "finished", 600)
    panel.refresh_monitor()  # the status can turn "finished" between a refresh's read of the events and the check
    assert panel.use_button.isEnabled() and f"finished at step {2 * STAGE_STEPS}" in panel.log.toPlainText()
    # the scene world: each checkpoint's prompt alignment against the base model's
    assert panel.align_button.isVisible() and panel.align_button.isEnabled()
    panel.alignment.prompts = 5
    kept = {c.name for c in panel.run.checkpoints.glob("step-*")}
    # a checkpoint samples as its base model does (the demo's own guidance settings travel with it)
    assert (panel.run.latest_checkpoint() / "model" / "sampling_defaults.json").is_file()
    last = 2 * STAGE_STEPS
    stopped = int(max(kept - {f"step-{last:08d}"})[5:])  # where Stop saved
    assert STAGE_STEPS < stopped < last and len(kept) == 2  # keep_checkpoints = 2, as the preset says
    panel.measure_alignment()
    qtbot.waitUntil(lambda: "prompts," in panel.align_label.text() and "left" in panel.align_label.text(),
                    timeout=120_000)  # count and time left as it goes, and a Stop
    assert "of 3)" in panel.align_label.text() and panel.align_stop.isVisible()
    qtbot.waitUntil(lambda: set(panel.alignment.scores(panel.run)) == {"base model"} | kept, timeout=300_000)
    assert not panel.align_stop.isVisible() and "measuring" not in panel.align_label.text()
    assert "base model: single shapes" in panel.align_label.text() and f"step-{last:08d}" in panel.align_label.text()
    # the checkpoints side by side with the base model: the same seeds, validation loss and alignment under each
    compared = panel.compare_checkpoints()
    qtbot.waitUntil(lambda: not compared.busy, timeout=300_000)
    headers = [compared.grid.horizontalHeaderItem(c).text() for c in range(compared.grid.columnCount())]
    assert [h.splitlines()[0] for h in headers] == ["base model", f"step {stopped}", f"step {last}"], \
        compared.message.text()
    assert all("single" in h and "pairs" in h for h in headers) and compared.grid.rowCount() == 2
    qtbot.waitUntil(lambda: not compared.grid.item(1, 2).icon().isNull(), timeout=10_000)
    compared.grid.cellClicked.emit(1, 2)
    enlarged = panel.findChildren(QDialog)[-1]
    assert f"step {last}" in enlarged.findChildren(QTextBrowser)[0].toPlainText()
    enlarged.close()
    compared.close()
    panel.use_checkpoint()
    qtbot.waitUntil(lambda: again.client.info.get("model", {}).get("name", "").endswith(f" step {last}"),
                    timeout=120_000)
    assert again.tabs.currentWidget() is again.generate


def fake_run(name: str, state: str, launcher_pid: int | None, checkpoint: bool, log: str = "") -> RunFolder:
    run = RunFolder(runs_dir() / name)
    run.path.mkdir(parents=True)
    run.config.write_text('name = "x"\n[[stages]]\nname = "only"\n')
    run.set_status(state, step=7, total_steps=20, stage="only", loss=0.25, message="the training process exited "
                   "with code 1; see train.log" if state == "failed" else "")
    run.log(StageStart("only", 0, 0))
    for step in range(1, 8):
        run.log(Step(step, "only", loss=1 / step, lr=1e-4, grad_norm=0.5, samples_per_s=3.0, eta_s=9))
    with run.events.open("a") as handle:
        handle.write(json.dumps({"event": "a-kind-from-a-newer-trainer", "time": 1.0, "step": 7}) + "\n")
    with run.events.open("a") as handle:
        handle.write('{"event": "step", "step": 8, "lo')  # cut mid-line by a crash
    if launcher_pid is not None:
        run.launcher_file.write_text(json.dumps({"pid": launcher_pid, "pid_start": start_time(launcher_pid),
                                                 "host": os.uname().nodename}))
    if checkpoint:
        (run.checkpoints / "step-00000007").mkdir(parents=True)
        (run.checkpoints / "step-00000007" / "COMPLETE").touch()
    if log:
        run.log_file.write_text(log)
    return run


def test_dead_and_failed_runs_are_never_running_or_finished(window, qtbot):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    fake_run("killed", "running", gone.pid, checkpoint=True)
    fake_run("crashed", "failed", None, checkpoint=False, log="line one\nTraceback (most recent call last):\n"
             "RuntimeError: CUDA error: an illegal memory access\n")
    fake_run("no-model", "finished", None, checkpoint=False)
    panel = window.train
    window.tabs.setCurrentWidget(panel)
    panel.refresh_runs()
    states = {panel.runs.item(r, 0).text(): panel.runs.item(r, 1).text() for r in range(panel.runs.rowCount())}
    assert states == {"killed": "interrupted", "crashed": "failed", "no-model": "failed"}
    panel.select_run(runs_dir() / "killed")
    assert len(panel.plot.steps) == 7 and "interrupted" in panel.headline.text()
    assert "Resume continues" in panel.headline.text() and panel.resume_button.isEnabled()
    assert not panel.stop_button.isEnabled() and not panel.kill_button.isEnabled()
    panel.select_run(runs_dir() / "crashed")
    assert "illegal memory access" in panel.log.toPlainText() and "see train.log" in panel.headline.text()
    assert not panel.use_button.isEnabled()


def test_kill_is_offered_only_when_a_stop_has_not_ended_the_run(window, qtbot, monkeypatch):
    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    run = fake_run("stuck", "running", trainer.pid, checkpoint=True)
    panel = window.train
    window.tabs.setCurrentWidget(panel)
    panel.select_run(run.path)
    assert panel.stop_button.isEnabled() and not panel.kill_button.isEnabled()
    panel.stop_run()
    panel.refresh_monitor()
    assert run.stop_flag.exists() and not panel.kill_button.isEnabled()
    assert "Stop asked 0:00:00 ago" in panel.headline.text()
    old = time.time() - 45
    os.utime(run.stop_flag, (old, old))  # the stop has had 45 s and the process still runs
    panel.refresh_monitor()
    assert panel.kill_button.isEnabled() and "Kill ends it" in panel.headline.text()
    monkeypatch.setattr(plain_text, "ask", lambda *a, **k: True)
    panel.kill_run()
    assert trainer.wait(10) == -9
    panel.refresh_monitor()
    assert "interrupted" in panel.headline.text() and panel.resume_button.isEnabled()


def test_a_long_log_is_read_off_the_gui_thread_with_per_stage_progress(window, qtbot):
    run = fake_run("long", "stopped", None, checkpoint=True)
    run.config.write_text('name = "x"\n[[stages]]\nname = "low"\nsteps = 6000\n'
                          '[[stages]]\nname = "high"\nsteps = 4000\n')
    run.events.write_text("".join(json.dumps({"event": "step", "step": s, "stage": "low" if s <= 6000 else "high",
                                              "loss": 1 / s, "lr": 1e-4}) + "\n" for s in range(1, 8001)))
    run.set_status("stopped", step=8000, total_steps=10000, stage="high", loss=0.1)
    panel = window.train
    window.tabs.setCurrentWidget(panel)
    panel.select_run(run.path)
    assert panel.catch_up.running and len(panel.plot.steps) == 0  # the GUI thread did not read it
    qtbot.waitUntil(lambda: len(panel.plot.steps) == 8000, timeout=30_000)
    panel.refresh_monitor()
    assert "step 8000/10000" in panel.headline.text()
    assert "stage high (2 of 2), step 2000/4000" in panel.headline.text()


def test_deleting_a_run_asks_and_moves_it_to_the_trash(window, qtbot, monkeypatch):
    fake_run("old", "stopped", None, checkpoint=True)
    panel = window.train
    window.tabs.setCurrentWidget(panel)
    panel.select_run(runs_dir() / "old")
    monkeypatch.setattr(plain_text, "ask", lambda *a, **k: False)
    panel.delete_run()
    assert (runs_dir() / "old").exists()
    monkeypatch.setattr(plain_text, "ask", lambda *a, **k: True)
    panel.delete_run()
    assert not (runs_dir() / "old").exists() and list((runs_dir() / ".trash").glob("old-*"))
    assert panel.runs.rowCount() == 0


@pytest.fixture(autouse=True)
def no_stray_runs():
    yield
    for info in runs_dir().glob("*/launcher.json"):  # a test that failed mid-run leaves no trainer behind
        from app.train_runs import kill

        kill(info.parent)


def test_the_window_fits_small_screens_and_the_runs_list_shows_its_columns(window, qtbot):
    fake_run("demo-scenes-64-20261205-1502", "stopped", None, checkpoint=True)
    hint = window.minimumSizeHint()
    assert hint.width() <= 1024 and hint.height() <= 660  # usable at 1024x700, title bar included
    window.resize(1280, 720)
    window.tabs.setCurrentWidget(window.train)
    window.train.refresh_runs()
    qtbot.waitUntil(lambda: window.train.runs.rowCount() == 1)
    table = window.train.runs
    shown = sum(table.columnWidth(c) for c in range(table.columnCount()))
    assert shown <= table.viewport().width() + 2, (shown, table.viewport().width())  # no column behind a scroll bar


def test_a_run_that_ends_is_announced_whichever_tab_is_shown(window, qtbot):
    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    run = fake_run("ending", "running", trainer.pid, checkpoint=True)
    panel = window.train
    window.tabs.setCurrentWidget(panel)
    panel.refresh_runs()
    window.tabs.setCurrentWidget(window.generate)  # the person went back to generating
    messages = []
    panel.status.connect(messages.append)
    run.set_status("finished", step=20, total_steps=20)
    trainer.kill()
    trainer.wait()
    panel.announce_ended()
    assert messages and "ending finished" in messages[0] and "Use in Generate" in messages[0]
    panel.announce_ended()
    assert len(messages) == 1  # once


def test_every_checkpoint_is_listed_with_its_validation_loss_and_an_older_one_generates(real_window, qtbot, tiny_model):
    """The plot shows the validation loss beside the training loss; the Checkpoints tab lists each one with its
    validation loss, the best marked; Use in Generate takes the chosen (older) one, named "RUN step N"."""
    window = real_window
    run = fake_run("chosen", "finished", None, checkpoint=False)
    for step, loss in ((4, 0.25), (7, 0.31)):
        run.log(Validation(step, "only", loss, 64, 5, 0.4))
        folder = run.checkpoints / f"step-{step:08d}"
        shutil.copytree(tiny_model, folder / "model")
        (folder / "state").mkdir()
        (folder / "state" / "trainer_state.json").write_text(json.dumps(
            {"global_step": step, "stage": 0, "step_in_stage": step, "stage_name": "only",
             "validation_loss": loss, "validation_resolution": 64}))
        (folder / "COMPLETE").touch()
    panel = window.train
    window.tabs.setCurrentWidget(panel)
    panel.select_run(run.path)
    assert panel.plot.points.validation == [(4, 0.25), (7, 0.31)]
    assert "validation loss 0.25000 at step 4 (5 held-out images at 64 px" in panel.log.toPlainText()
    table = panel.checkpoint_table
    rows = [[table.item(r, c).text() for c in range(table.columnCount())] for r in range(table.rowCount())]
    assert [r[0] for r in rows] == ["7", "4"] and rows[1][2].endswith("★ best") and "★" not in rows[0][2]
    assert rows[1][1] == "only" and rows[1][2].startswith("0.25000 (64 px)") and rows[1][4].endswith("iB")
    table.selectRow(1)
    dialog = panel.export_checkpoint()  # the chosen one, for ComfyUI, in a process of its own
    assert dialog.out.text().endswith("exports/chosen-step-4-comfyui-bf16.safetensors")
    dialog.start()
    qtbot.waitUntil(lambda: not dialog.isVisible(), timeout=120_000)
    assert Path(dialog.out.text()).is_file() and not dialog.message.text()
    panel.use_checkpoint()
    qtbot.waitUntil(lambda: window.client.info.get("model", {}).get("name") == "chosen step 4", timeout=120_000)
    window.generate.apply_values({"prompt": "a red circle", "width": 64, "height": 48, "steps": 3})
    window.generate.request_generation()
    qtbot.waitUntil(lambda: window.gallery.model.rowCount() == 1, timeout=120_000)
    assert window.gallery.model.entries[0].model == "chosen step 4"
