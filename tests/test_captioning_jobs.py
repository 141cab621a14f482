"""Caption jobs over real folders: modes, several styles, provenance, bad images, resume after kill -9, the
OpenAI-compatible backend against a server on 127.0.0.1, read-only and full disks, the CLI and the worker."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from filesystems import mount_tmpfs, unmount_tmpfs
from openai_server import OpenAIServer
from PIL import Image

from core.captioning.state import FROM_FILE, CaptionState
from core.captioning.job import CaptionError, CaptionRun, CaptionSettings
from core.captioning.server import ServerCaptioner, ServerError
from core.captioning.files import read_captions, write_captions

ROOT = Path(__file__).resolve().parents[1]
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "grey": (128, 128, 128)}


def folder_of_colours(folder: Path, count: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    for i in range(count):
        Image.new("RGB", (48, 32), COLOURS[names[i % len(names)]]).save(folder / f"img-{i:02d}.png")
    return folder


@pytest.fixture
def server():
    with OpenAIServer() as running:
        yield running


def run_job(folder, captioner, **settings):
    outcomes = []
    summary = CaptionRun(CaptionSettings(folder=str(folder), **settings), captioner).run(on_result=outcomes.append)
    return summary, outcomes


def test_server_captions_a_folder_in_several_styles_one_line_each(tmp_path, server):
    folder = folder_of_colours(tmp_path / "set")
    server.script.think = True
    captioner = ServerCaptioner(server.url)
    assert captioner.model == "tiny-vlm"
    summary, outcomes = run_job(folder, captioner, styles=["detailed", "short"])
    assert summary.captioned == 4 and not summary.failed
    lines = read_captions(folder / "img-00.png")
    assert len(lines) == 2
    assert lines[0].startswith("an image of colour (220, 40, 40) asked 'Describe this image in detail.'")
    assert "short caption" in lines[1] and "<think>" not in lines[0]
    # the system prompt of each style went with its question
    assert {r["messages"][0]["content"][:40] for r in server.script.requests} == {
        "You are a helpful assistant that writes ", }
    state = CaptionState(folder)
    sources = state.sources(folder / "img-00.png", lines)
    assert [s["style"] for s in sources] == ["detailed", "short"] and "tiny-vlm" in sources[0]["source"]
    edited = ["a red thing, typed by a person", lines[1]]
    write_captions(folder / "img-00.png", edited)
    assert [s["source"] for s in state.sources(folder / "img-00.png", edited)][0] == FROM_FILE  # changed elsewhere
    state.close()


def test_skip_overwrite_and_append(tmp_path, server):
    folder = folder_of_colours(tmp_path / "set", 3)
    write_captions(folder / "img-00.png", ["kept by hand"])
    captioner = ServerCaptioner(server.url)
    summary, _ = run_job(folder, captioner, styles=["short"])
    assert (summary.captioned, summary.skipped) == (2, 1)
    assert read_captions(folder / "img-00.png") == ["kept by hand"]
    run_job(folder, captioner, styles=["tags"], mode="append")
    appended = read_captions(folder / "img-00.png")
    assert appended[0] == "kept by hand" and "key tags" in appended[1] and len(appended) == 2
    summary, _ = run_job(folder, captioner, styles=["short"], mode="overwrite", prefix="photo, ")
    assert summary.captioned == 3
    lines = read_captions(folder / "img-00.png")
    assert len(lines) == 1 and lines[0].startswith("photo, an image of colour")


def test_retries_empty_answers_and_concurrency(tmp_path, server):
    folder = folder_of_colours(tmp_path / "set", 8)
    server.script.fail_first = 2  # two 500s, retried
    server.script.empty_for = {COLOURS["blue"]}
    server.script.delay = 0.2
    captioner = ServerCaptioner(server.url, concurrency=4)
    summary, outcomes = run_job(folder, captioner, batch=8)
    assert summary.captioned == 6
    assert sorted(summary.failed) == ["img-02.png: the server gave an empty caption",
                                      "img-06.png: the server gave an empty caption"]
    assert not (folder / "img-02.txt").exists()
    assert server.script.most_in_flight >= 3


def test_server_problems_are_one_clear_message(tmp_path, server):
    server.script.api_key = "secret"
    with pytest.raises(ServerError, match="refused the API key"):
        ServerCaptioner(server.url)
    assert ServerCaptioner(server.url, api_key="secret").model == "tiny-vlm"
    with pytest.raises(ServerError, match="No OpenAI-compatible server answers at http://127.0.0.1:9"):
        ServerCaptioner("http://127.0.0.1:9/v1", retries=0)


def bad_images(folder: Path) -> tuple[list[str], list[str]]:
    """Every awkward kind of file; returns (names that caption, names that are per-image errors)."""
    folder.mkdir(parents=True, exist_ok=True)
    import numpy as np

    Image.fromarray(np.full((16, 16), 40000, np.uint16)).save(folder / "deep-16bit.png")
    Image.new("CMYK", (16, 16), (0, 200, 200, 0)).save(folder / "print-cmyk.jpg")
    Image.new("P", (16, 16), 3).save(folder / "palette.png", transparency=3)
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(folder / "moving.gif", save_all=True, append_images=frames[1:])
    (folder / "empty.png").write_bytes(b"")
    (folder / "not-an-image.jpg").write_bytes(b"this is text, not a JPEG")
    Image.new("RGB", (64, 64), (9, 9, 9)).save(folder / "cut.png")
    whole = (folder / "cut.png").read_bytes()
    (folder / "cut.png").write_bytes(whole[: len(whole) // 2])
    Image.new("1", (14000, 14000)).save(folder / "bomb.png")  # 196 Mpixels in a few kB
    return (["deep-16bit.png", "moving.gif", "palette.png", "print-cmyk.jpg"],
            ["bomb.png", "cut.png", "empty.png", "not-an-image.jpg"])


def test_bad_images_are_per_image_errors_never_a_crash(tmp_path, server):
    good, bad = bad_images(tmp_path / "set")
    summary, outcomes = run_job(tmp_path / "set", ServerCaptioner(server.url))
    assert summary.captioned == len(good)
    failed = {line.split(":")[0]: line for line in summary.failed}
    assert sorted(failed) == bad
    assert "too large to open safely" in failed["bomb.png"]
    assert "truncated" in failed["cut.png"] and "not an image" in failed["empty.png"]
    for name in good:
        assert read_captions(tmp_path / "set" / name)


def test_a_failed_caption_write_leaves_the_old_caption(tmp_path, server, monkeypatch):
    folder = folder_of_colours(tmp_path / "set", 1)
    write_captions(folder / "img-00.png", ["the old caption"])

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    summary, _ = run_job(folder, ServerCaptioner(server.url), mode="overwrite")
    assert summary.failed == ["img-00.png: img-00.txt cannot be written (Input/output error)"]
    monkeypatch.undo()
    assert read_captions(folder / "img-00.png") == ["the old caption"]
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".lumina-captions")) == [
        "img-00.png", "img-00.txt"]


def test_read_only_and_full_disks(tmp_path, server):
    readonly, small = tmp_path / "ro", tmp_path / "small"
    if not mount_tmpfs(readonly, "ro", "size=1m"):
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        with pytest.raises(CaptionError, match="read-only for you"):
            run_job(readonly, ServerCaptioner(server.url))
    finally:
        unmount_tmpfs(readonly)
    assert mount_tmpfs(small, "size=256k")
    try:
        folder = folder_of_colours(small / "set", 4)
        run_job(folder, ServerCaptioner(server.url), images=["img-00.png"])  # the state file exists
        with open(small / "filler", "wb") as filler:  # almost no room left
            filler.write(b"\0" * (os.statvfs(small).f_bavail * os.statvfs(small).f_frsize - 8 * 1024))
        with pytest.raises(CaptionError, match="is full .* the captions written so far are kept"):
            run_job(folder, ServerCaptioner(server.url), styles=["detailed", "medium", "short", "tags"],
                    prefix="x" * 4000)
        assert read_captions(folder / "img-00.png")  # the earlier caption is intact
    finally:
        unmount_tmpfs(small)


def cli(*args, home: Path, timeout=300):
    env = {**os.environ, "LUMINA_STUDIO_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "core.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)


def test_cli_resumes_after_kill_9_losing_at_most_the_image_in_flight(tmp_path, server):
    folder = folder_of_colours(tmp_path / "set", 12)
    server.script.delay = 0.3
    env = {**os.environ, "LUMINA_STUDIO_HOME": str(tmp_path / "home")}
    command = [sys.executable, "-m", "core.cli", "caption", str(folder), "--server", server.url,
               "--mode", "overwrite", "--batch", "1", "--concurrency", "1"]
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while len(list(folder.glob("*.txt"))) < 4 and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = len(server.script.requests)
    assert 4 <= len(list(folder.glob("*.txt"))) < 12
    server.script.delay = 0
    result = cli("caption", folder, "--server", server.url, "--mode", "overwrite", "--batch", "1",
                 home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    redone = len(server.script.requests) - before
    assert len(list(folder.glob("*.txt"))) == 12
    assert redone <= 12 - 4 + 1  # what was left, and at most the image that was in flight
    assert "captioned, " in result.stderr and not list(folder.glob(".*.tmp"))
    rerun = cli("caption", folder, "--server", server.url, "--mode", "overwrite", home=tmp_path / "home")
    assert "12 captioned" in rerun.stderr  # a finished run is not resumed: a rerun is a new run


def test_cli_bad_arguments_are_one_line(tmp_path):
    folder = folder_of_colours(tmp_path / "set", 1)
    for args, message in ((["--style", "poetic"], "Unknown caption style 'poetic'"),
                          (["--prompt", "{nmae}"], "{nmae}"), (["--batch", "0"], "at least 1"),
                          (["--model", tmp_path / "nowhere"], "does not exist")):
        result = cli("caption", folder, *args, home=tmp_path / "home")
        assert result.returncode == 1 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    missing = cli("caption", tmp_path / "no-such-folder", home=tmp_path / "home")
    assert missing.returncode == 1 and "is not a folder" in missing.stderr


def test_custom_prompt_template_fields(tmp_path, server):
    folder = folder_of_colours(tmp_path / "holiday", 1)
    write_captions(folder / "img-00.png", ["a beach"])
    run_job(folder, ServerCaptioner(server.url), custom_prompt="Improve '{caption}' for {name} in {folder}.",
            mode="append")
    assert "Improve 'a beach' for img-00 in holiday." in read_captions(folder / "img-00.png")[1]


def test_caption_service_in_a_worker_reports_each_image(tmp_path, server):
    from core.captioning.messages import CaptionFolder, CountCaptionTokens, ImageOutcome, Summary
    from core.captioning.service import SERVICE, CaptionerOptions
    from core.jobs import EventType, JobWorker, Progress

    folder = folder_of_colours(tmp_path / "set", 3)
    worker = JobWorker(SERVICE, CaptionerOptions(server=server.url), name="lumina-captioner")
    worker.start()
    try:
        job = worker.submit(CaptionFolder({"folder": str(folder), "styles": ["short"]}), label="caption set")
        events, deadline = [], time.time() + 120
        while not any(e.type in (EventType.DONE, EventType.ERROR, EventType.LOAD_ERROR) for e in events):
            events += worker.poll(0.2)
            assert time.time() < deadline, events
        ready = next(e for e in events if e.type == EventType.READY)
        assert "tiny-vlm" in ready.data["captioner"]
        results = [e.data for e in events if e.type == EventType.RESULT and e.job == job]
        outcomes = [r for r in results if isinstance(r, ImageOutcome)]  # told apart by type, not keys
        assert sorted(r.image for r in outcomes) == ["img-00.png", "img-01.png", "img-02.png"]
        assert isinstance(results[-1], Summary) and results[-1].captioned == 3
        progress = [e.data for e in events if e.type == EventType.PROGRESS]
        assert all(isinstance(p, Progress) for p in progress) and progress[-1].step == 3
        worker.ask(CountCaptionTokens("a red circle"))
        deadline = time.time() + 30
        while not (answers := [e for e in worker.poll(0.2) if e.type == EventType.ANSWER]):
            assert time.time() < deadline
        assert answers[0].data.value.count > 3 and answers[0].data.value.limit == 256
    finally:
        worker.shutdown()


def test_jsonl_output_and_token_counts(tmp_path, server):
    folder = folder_of_colours(tmp_path / "set", 2)
    result = cli("caption", folder, "--server", server.url, "--json", home=tmp_path / "home")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["image"] for r in rows] == ["img-00.png", "img-01.png"]
    assert all(r["tokens"][0] > 10 and not r["error"] for r in rows)


def test_several_processes_through_accelerate_share_the_images(tmp_path, server):
    folder = folder_of_colours(tmp_path / "set", 10)
    result = cli("caption", folder, "--server", server.url, "--gpus", "2", "--device", "cpu", home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("5 captioned") == 2  # one summary per process, each its half
    assert len(list(folder.glob("*.txt"))) == 10 and len(server.script.requests) == 10


def _open_state_at_once(folder: str, barrier) -> None:
    barrier.wait()
    state = CaptionState(Path(folder))
    state.begin_run({"process": os.getpid()})
    state.close()


def test_processes_opening_a_new_state_file_at_once(tmp_path):
    # One process per GPU opens the folder's state file at the same moment; switching a new file to WAL
    # answered "database is locked" at once to about one process in thirteen (the CI caught it).
    context = multiprocessing.get_context("fork")
    for round_ in range(15):
        folder = tmp_path / f"set{round_}"
        folder.mkdir()
        barrier = context.Barrier(4)
        workers = [context.Process(target=_open_state_at_once, args=(str(folder), barrier)) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert [w.exitcode for w in workers] == [0] * 4, f"round {round_}"


def test_export_captions_from_the_command_line(tmp_path):
    from trainer.config import DatasetConfig
    from trainer.datasets import read_dataset

    folder = folder_of_colours(tmp_path / "set", 3)
    write_captions(folder / "img-00.png", ["a red card", "red"])
    write_captions(folder / "img-01.png", ["a green card"])
    result = cli("export-captions", folder, "--format", "jsonl", "--out", tmp_path / "set.jsonl", home=tmp_path / "h")
    assert result.returncode == 0, result.stderr
    assert "2 images, 3 captions" in result.stdout and "1 without a caption" in result.stdout
    items, _ = read_dataset(DatasetConfig(path=str(tmp_path / "set.jsonl"), min_side=16), 0)
    assert sorted(c for i in items for c in i.captions) == ["a green card", "a red card", "red"]
    bad = cli("export-captions", folder, "--format", "csv", "--out", tmp_path / "x", home=tmp_path / "h")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def red() -> Image.Image:
    return Image.new("RGB", (32, 32), (220, 40, 40))


def test_a_server_that_never_ends_drips_or_stalls_costs_one_deadline(server):
    from core.captioning.server import CaptionFailed

    captioner = ServerCaptioner(server.url, timeout=20, concurrency=1)
    server.script.endless = "chat"  # 64 KiB after 64 KiB, for ever
    started = time.monotonic()
    [answer] = captioner.caption([red()], ["describe"])
    assert isinstance(answer, CaptionFailed) and "larger than 8 MiB" in str(answer)
    assert time.monotonic() - started < 15
    server.script.endless = "drip"  # one byte every 2 s: no read ever times out
    captioner.timeout = 3
    started = time.monotonic()
    [answer] = captioner.caption([red()], ["describe"])
    assert isinstance(answer, CaptionFailed) and "did not answer within 3 s" in str(answer)
    assert 2.5 < time.monotonic() - started < 8
    server.script.endless = "models"
    with pytest.raises(ServerError):
        ServerCaptioner(server.url, timeout=3)


def test_stop_ends_a_request_in_flight_and_retry_after_is_honoured(server):
    from core.errors import Cancelled

    captioner = ServerCaptioner(server.url, concurrency=2)
    server.script.delay = 60  # a stalled server
    started = time.monotonic()
    captioner.should_stop = lambda: time.monotonic() > started + 0.5
    with pytest.raises(Cancelled):
        captioner.caption([red(), red()], ["describe", "describe"])
    assert time.monotonic() - started < 2
    server.script.delay = 0
    captioner.should_stop = lambda: False
    server.script.busy_first = len(server.script.requests) + 1
    started = time.monotonic()
    [answer] = captioner.caption([red()], ["describe"])
    assert isinstance(answer, str) and time.monotonic() - started >= 1.0  # it waited the Retry-After: 1


def test_a_server_that_dies_mid_job_stops_it_with_one_message(tmp_path, server):
    folder = folder_of_colours(tmp_path / "set", 12)
    captioner = ServerCaptioner(server.url)
    server.script.gone = True
    with pytest.raises(ServerError, match="stopped answering"):
        run_job(folder, captioner)
    assert len(server.script.requests) < 20  # the first requests' tries, not 12 images x 3 tries each (36)
    server.script.gone = False  # started again: the next job (the same captioner, in the app's worker) works
    assert run_job(folder, captioner)[0].captioned == 12


def test_the_api_key_comes_from_the_environment_and_is_written_nowhere(tmp_path, server):
    folder = folder_of_colours(tmp_path / "set", 2)
    server.script.api_key = "sk-very-secret"
    env = {**os.environ, "LUMINA_STUDIO_HOME": str(tmp_path / "home"), "LUMINA_STUDIO_API_KEY": "sk-very-secret"}
    result = subprocess.run([sys.executable, "-m", "core.cli", "caption", str(folder), "--server", server.url],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "not this computer" not in result.stderr  # 127.0.0.1
    written = b"".join(p.read_bytes() for p in [*folder.iterdir(), *(tmp_path / "home").rglob("*")] if p.is_file())
    assert len(read_captions(folder / "img-00.png")) == 1 and b"sk-very-secret" not in written + result.stderr.encode()


def test_two_append_runs_on_one_folder_keep_both_lines(tmp_path, server):
    folder = folder_of_colours(tmp_path / "set", 16)
    for image in folder.glob("*.png"):
        write_captions(image, ["the old line"])
    server.script.delay = 0.2  # a batch of 8 takes 1.6 s: both runs hold the same images at once
    env = {**os.environ, "LUMINA_STUDIO_HOME": str(tmp_path / "home")}
    runs = [subprocess.Popen([sys.executable, "-m", "core.cli", "caption", str(folder), "--server", server.url,
                              "--mode", "append", "--concurrency", "1", "--prompt", f"{word} {{name}}"],
                             env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for word in ("first", "second")]
    for run in runs:
        assert run.wait(timeout=300) == 0, run.stderr.read()
    for image in folder.glob("*.png"):
        lines = read_captions(image)
        assert len(lines) == 3 and lines[0] == "the old line", lines
        assert {line.split("'")[1].split()[0] for line in lines[1:]} == {"first", "second"}


def test_a_rerun_after_a_kill_between_write_and_record_adds_no_second_line(tmp_path, server):
    import sqlite3

    from core.captioning.state import STATE_FILE

    folder = folder_of_colours(tmp_path / "set", 3)
    assert run_job(folder, ServerCaptioner(server.url), mode="append", batch=1)[0].captioned == 3
    with sqlite3.connect(folder / STATE_FILE) as db:  # killed after img-01's .txt was written, before its mark
        db.execute("DELETE FROM done WHERE image = 'img-01.png'")
        db.execute("UPDATE runs SET finished = NULL")
    asked = len(server.script.requests)
    summary, _ = run_job(folder, ServerCaptioner(server.url), mode="append", batch=1)
    assert summary.captioned == 0 and len(server.script.requests) == asked
    assert [len(read_captions(image)) for image in sorted(folder.glob("*.png"))] == [1, 1, 1]
    # a later run of the same settings is a new run
    assert run_job(folder, ServerCaptioner(server.url), mode="append", batch=1)[0].captioned == 3
    assert [len(read_captions(image)) for image in sorted(folder.glob("*.png"))] == [1, 1, 1]  # same text


def test_an_export_never_writes_inside_its_source_or_over_a_file(tmp_path):
    folder = folder_of_colours(tmp_path / "set", 2)
    write_captions(folder / "img-00.png", ["a red card"])
    write_captions(folder / "img-01.png", ["a green card"])
    sub = folder / "sub"
    sub.mkdir()
    (sub / "a.png").write_bytes((folder / "img-00.png").read_bytes())
    write_captions(sub / "a.png", ["mine"])
    untouched = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    def export(*args):
        return cli("export-captions", folder, *args, home=tmp_path / "h")

    refusals = [(export("--format", "txt", "--out", sub, "--recursive"), "inside the folder being exported"),
                (export("--format", "txt", "--out", folder), "inside the folder being exported"),
                (export("--format", "jsonl", "--out", sub / "a.txt"), "does not end in .jsonl"),
                (export("--format", "jsonl", "--out", sub / "a.txt", "--force"), "does not end in .jsonl"),
                (export("--format", "imagefolder", "--out", tmp_path), "holds the folder being exported")]
    for result, message in refusals:
        assert result.returncode == 1 and message in result.stderr and "PosixPath" not in result.stderr, result.stderr
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and "lumina-captions" not in p.name} == \
        {p: b for p, b in untouched.items() if "lumina-captions" not in p.name}

    used = tmp_path / "used"
    used.mkdir()
    (used / "img-00.png").write_bytes(b"someone else's")
    result = export("--format", "txt", "--out", used)
    assert result.returncode == 1 and "not empty" in result.stderr
    assert (used / "img-00.png").read_bytes() == b"someone else's"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export("--format", "txt", "--out", empty).returncode == 0
    assert read_captions(empty / "img-00.png") == ["a red card"] and not list(tmp_path.glob(".empty-partial-*"))

    (tmp_path / "set.jsonl").write_text("keep me\n")
    result = export("--format", "jsonl", "--out", tmp_path / "set.jsonl")
    assert result.returncode == 1 and "--force" in result.stderr
    assert (tmp_path / "set.jsonl").read_text() == "keep me\n"
    assert export("--format", "jsonl", "--out", tmp_path / "set.jsonl", "--force").returncode == 0
    assert "a red card" in (tmp_path / "set.jsonl").read_text()


def test_caption_lengths_counted_without_torch_match_transformers():
    from transformers import AutoTokenizer

    from core.captioning.tokens import lumina_token_counter
    from core.models.registry import find_model
    from core.generation.prompts import full_prompt, system_prompt_text

    fast = lumina_token_counter(slow_allowed=False)
    slow = AutoTokenizer.from_pretrained(str(find_model(None).components / "tokenizer"))
    for text in ("a red circle", "Ünïcode текст with 🎨 and a long tail " * 20, ""):
        assert fast(text) == len(slow(full_prompt(text, system_prompt_text("real")), truncation=False).input_ids)


def test_huge_images_are_scaled_down_as_they_are_read_and_the_summary_says_so(tmp_path, server, monkeypatch):
    from core.captioning import job as job_module
    from core.captioning import messages

    monkeypatch.setattr(job_module, "MAX_SIDE", 64)  # what the job reads images at
    monkeypatch.setattr(messages, "MAX_SIDE", 64)  # what its summary says
    folder = tmp_path / "set"
    folder.mkdir()
    Image.new("RGB", (640, 320), (220, 40, 40)).save(folder / "big.png")
    Image.new("RGB", (48, 32), (220, 40, 40)).save(folder / "small.png")
    seen = []
    captioner = ServerCaptioner(server.url)
    original = captioner.caption
    monkeypatch.setattr(captioner, "caption", lambda images, *a, **k: seen.extend(i.size for i in images)
                        or original(images, *a, **k))
    summary, _ = run_job(folder, captioner)
    assert sorted(seen) == [(48, 32), (64, 32)] and summary.downscaled == 1
    assert "1 images larger than 64 px were scaled down" in summary.describe()


def test_a_caption_that_repeats_itself_is_cut_and_its_image_marked_for_review(tmp_path, monkeypatch):
    from core.captioning.state import CaptionState
    from core.captioning.repetition import cut_repetition

    assert cut_repetition("a red square " + "square " * 95) == ("a red square", True)
    assert cut_repetition("a red circle, " * 6) == ("a red circle,", True)
    assert cut_repetition("a very very good dog") == ("a very very good dog", False)

    from core.scenes.world import write_dataset

    folder = tmp_path / "set"
    write_dataset(folder, 2, seed=4, captions=False)
    result = cli("caption", folder, "--mode", "overwrite", "--prompt", "What is {caption}?", home=tmp_path / "h")
    assert "ignores --prompt" in result.stderr

    class Looping:
        name, model_type, follows_questions = "looping", "test", True

        def caption(self, images, questions, *args, **kwargs):
            return ["a blue triangle " + "square " * 90] + ["a green circle"] * (len(images) - 1)

    summary, _ = run_job(folder, Looping(), mode="overwrite")
    assert summary.repeated == 1 and "1 captions repeated themselves" in summary.describe()
    assert read_captions(folder / "scene-00000.png") == ["a blue triangle square"]
    state = CaptionState(folder)
    assert state.statuses() == {"scene-00000.png": "needs fixing"}
    state.close()


def test_a_strict_openai_server_is_asked_again_without_the_fields_it_refuses(tmp_path, server):
    """transformers serve answers 422 to top_k and repetition_penalty: the first request is sent again
    without them, the summary says so, and the next job asks without them from the start."""
    from core.captioning.server import ServerCaptioner, servers_file

    server.script.strict = True
    folder = folder_of_colours(tmp_path / "set", 6)
    captioner = ServerCaptioner(server.url, concurrency=2)
    summary, outcomes = run_job(folder, captioner)
    assert summary.captioned == 6 and not summary.failed
    assert any("does not take top_k and repetition_penalty" in w for w in summary.warnings)
    refused = [r for r in server.script.requests if "top_k" in r]
    assert 1 <= len(refused) <= 2  # the requests in flight when the refusal came; none after
    assert json.loads(servers_file().read_text())[server.url]["refused"] == ["repetition_penalty", "top_k"]
    same, _ = run_job(folder, captioner, mode="overwrite")  # the app's worker keeps its captioner: said once
    assert same.captioned == 6 and not any("does not take" in w for w in same.warnings)
    server.script.requests.clear()
    again, _ = run_job(folder, ServerCaptioner(server.url), mode="overwrite")
    assert again.captioned == 6 and not any("top_k" in r for r in server.script.requests)
    assert not any("does not take" in w for w in again.warnings)  # remembered: nothing new to say
    server.script.strict = False  # a lenient server still gets the fields
    other = ServerCaptioner(server.url.replace("127.0.0.1", "localhost"))
    run_job(folder, other, mode="overwrite")
    assert any("top_k" in r for r in server.script.requests[-6:])


def test_transformers_serve_captions_a_folder_with_the_demo_captioner(tmp_path):
    """A real strict OpenAI-compatible server, not our stub: `transformers serve` with the shipped demo captioner
    (a LLaVA). It refuses top_k and repetition_penalty with 422; the job learns that and captions every image."""
    import socket
    import urllib.request

    from core.captioning.server import ServerCaptioner
    from core.scenes.world import write_dataset

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    captioner_folder = Path(__file__).resolve().parents[1] / "resources" / "demo-captioner"
    command = [str(Path(sys.executable).with_name("transformers")), "serve", str(captioner_folder),
               "--host", "127.0.0.1", "--port", str(port)]
    log = tmp_path / "serve.log"  # a file, not a pipe: a pipe nobody reads would stall a chatty server
    with log.open("w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 180  # a safety net: the loop ends as soon as the server answers
        while True:
            assert server.poll() is None, log.read_text()
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "transformers serve did not start"
                time.sleep(0.5)
        folder = tmp_path / "scenes"
        write_dataset(folder, 4, seed=3, captions=False)
        summary, outcomes = run_job(folder, ServerCaptioner(url, concurrency=2))
        assert summary.captioned == 4 and not summary.failed, summary.describe()
        assert any("does not take top_k and repetition_penalty" in w for w in summary.warnings)
        captions = [read_captions(image)[0] for image in sorted(folder.glob("*.png"))]
        assert all(any(shape in c for shape in ("circle", "square", "triangle")) for c in captions), captions
    finally:
        server.terminate()
        server.wait(30)


def test_a_byte_order_mark_and_control_characters_never_reach_a_caption(tmp_path):
    """PowerShell 5 writes UTF-8 with a byte-order mark; a model can answer NUL or other control characters."""
    from core.captioning.styles import Prompt
    from core.datasets import read_dataset_captions

    folder = folder_of_colours(tmp_path / "set", 2)
    (folder / "img-00.txt").write_bytes("\ufeffa red square\r\nred, square\r\n".encode("utf-8"))
    (folder / "metadata.jsonl").write_bytes("\ufeff".encode() + b'{"path": "img-01.png", "prompt": "x"}\n')
    assert read_captions(folder / "img-00.png") == ["a red square", "red, square"]
    assert Prompt("tags", "", "q").finish("a\x00 blue\x07 square\x1b[0m") == "a blue square[0m"
    write_captions(folder / "img-01.png", ["one\x00 caption\x0b", "\ufeffother"])
    assert (folder / "img-01.txt").read_text(encoding="utf-8") == "one caption\nother\n"
    listing = read_dataset_captions(folder / "metadata.jsonl")  # a JSON file beginning with a mark reads too
    assert listing.pairs and not listing.unreadable


def test_imagefolder_export_has_one_caption_per_text_and_every_alternative_in_captions(tmp_path):
    """Hugging Face trainers read `text` as one caption: it holds the first, `captions` holds all; Hugging Face
    `datasets` loads the export, and our own reader gets every alternative back."""
    import datasets

    from core.captioning.review import CaptionDataset
    from core.datasets import read_dataset_captions

    folder = folder_of_colours(tmp_path / "set", 2)
    write_captions(folder / "img-00.png", ["a red card", "red, card"])
    write_captions(folder / "img-01.png", ["a green card"])
    CaptionDataset(folder).export("imagefolder", tmp_path / "hf", approved_only=False)
    rows = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "hf"), split="train")
    assert sorted(zip(rows["text"], rows["captions"])) == [("a green card", ["a green card"]),
                                                           ("a red card", ["a red card", "red, card"])]
    listing = read_dataset_captions(tmp_path / "hf")
    assert sorted(captions for _, captions in listing.pairs) == [["a green card"], ["a red card", "red, card"]]
