"""The command-line contract: output, --json, and one clear line (never a traceback) for bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.cli import main
from core.metadata import read_settings

SMALL = ["--width", "64", "--height", "48", "--steps", "3"]


def run_cli(capsys, *args):
    try:
        code = main(list(args))
    except SystemExit as exit_:  # argparse's own exit for a malformed argument
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if "error" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_generate_json_and_files(capsys, tiny_model, tmp_path):
    code, out, err = run_cli(capsys, "generate", "a red circle", "--model", str(tiny_model), *SMALL,
                             "--seed", "5", "--count", "2", "--out", str(tmp_path), "--json")
    assert code == 0, err
    records = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["seed"] for r in records] == [5, 6]
    assert all(r["transformer_evaluations"] > 0 and r["width"] == 64 and r["height"] == 48 for r in records)
    for record in records:
        settings = read_settings(record["path"])
        assert settings["prompt"] == "a red circle" and settings["seed"] == record["seed"]
        assert str(tiny_model) not in Path(record["path"]).read_bytes().decode("latin-1")  # name and hash only
    code, out, err = run_cli(capsys, "generate", "a red circle", "--model", str(tiny_model), *SMALL, "--seed", "5",
                             "--out", str(tmp_path / "with-path"), "--json", "--store-model-path")
    assert code == 0 and str(tiny_model) in Path(json.loads(out)["path"]).read_bytes().decode("latin-1")


def test_same_seed_same_file_contents(capsys, tiny_model, tmp_path):
    paths = []
    for folder in ("a", "b"):
        run_cli(capsys, "generate", "a cat", "--model", str(tiny_model), *SMALL, "--seed", "9",
                "--out", str(tmp_path / folder), "--json")
        paths.append(next((tmp_path / folder).glob("*.png")))
    from PIL import Image

    assert Image.open(paths[0]).tobytes() == Image.open(paths[1]).tobytes()


def test_default_output_is_the_library(capsys, tiny_model, data_home):
    code, out, _ = run_cli(capsys, "generate", "a cat", "--model", str(tiny_model), *SMALL, "--seed", "1")
    assert code == 0 and Path(out.split()[0]).parent == data_home / "library"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--width", "100"], "multiple of 16"),
        (["--height", "0"], "multiple of 16"),
        (["--width", "8208"], "position tables"),
        (["--steps", "0"], "Steps must be"),
        (["--guidance", "-1"], "Guidance must be 0 or more"),
        (["--solver", "heun"], "invalid choice"),
        (["--system-prompt", "surreal"], "Unknown system prompt"),
        (["--width", "abc"], "invalid int value"),
        (["--count", "0"], "Count must be"),
        (["--shift", "0"], "Time shift"),
        (["--seed", "-3"], "Seed must be"),
        (["--device", "cuda"], "no CUDA GPU"),
        (["--dtype", "fp16", "--device", "cpu"], "fp16 is not supported"),
        (["--cache", "fast"], "Cache setting"),
        (["--backend", "onnx", "--dtype", "bf16", "--device", "cpu"], "fp32 graphs only"),
    ],
)
def test_bad_settings(capsys, tiny_model, tmp_path, args, message):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = run_cli(capsys, "generate", "a cat", "--model", str(tiny_model), "--out", str(tmp_path), *args)
    assert code != 0
    assert message in error_line(err)


def test_prompt_far_too_long(capsys, tiny_model):
    code, _, err = run_cli(capsys, "generate", "word " * 5000, "--model", str(tiny_model))
    assert code == 1 and "Shorten it" in error_line(err)


def test_long_prompt_is_truncated_with_a_warning(capsys, tiny_model, tmp_path):
    code, _, err = run_cli(capsys, "generate", "word " * 400, "--model", str(tiny_model), *SMALL, "--out", str(tmp_path))
    assert code == 0 and "tokens are dropped" in err


def test_empty_prompt_gives_a_note(capsys, tiny_model, tmp_path):
    code, _, err = run_cli(capsys, "generate", "", "--model", str(tiny_model), *SMALL, "--out", str(tmp_path))
    assert code == 0 and "unconditional" in err


def test_bad_models(capsys, tiny_model, tmp_path):
    code, _, err = run_cli(capsys, "generate", "a cat", "--model", str(tmp_path / "missing"))
    assert code == 1 and "does not exist" in error_line(err)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"jpeg")
    code, _, err = run_cli(capsys, "generate", "a cat", "--model", str(tmp_path / "photos"))
    assert code == 1 and "not a diffusers model folder" in error_line(err)
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    code, _, err = run_cli(capsys, "generate", "a cat", "--model", str(notes))
    assert code == 1 and "neither a diffusers folder nor a checkpoint" in error_line(err)
    data = (tiny_model / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:1000])
    code, _, err = run_cli(capsys, "generate", "a cat", "--model", str(cut), "--components", str(tiny_model))
    assert code == 1 and "truncated or corrupt" in error_line(err)


def test_unwritable_output_folder(capsys, tiny_model, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, "generate", "a cat", "--model", str(tiny_model), "--out", str(blocker / "out"))
    assert code == 1 and "Cannot write images" in error_line(err)


def test_models_commands(capsys, tiny_model):
    code, out, err = run_cli(capsys, "models")  # a bare `models` lists them, the built-in demo first
    assert code == 0 and out.startswith("demo\tbuilt-in\t-\t") and "No models added yet" in err
    code, out, _ = run_cli(capsys, "models", "add", str(tiny_model), "--name", "tiny")
    assert code == 0 and "Added 'tiny'" in out
    code, out, err = run_cli(capsys, "models", "list")
    assert out.splitlines()[1].startswith("tiny\tdiffusers") and not err
    code, out, err = run_cli(capsys, "generate", "a cat", "--model", "tiny", *SMALL, "--json")
    assert code == 0, err


def test_console_script_end_to_end(tiny_model, tmp_path, data_home):
    """The installed `lumina-studio` program itself, as a person runs it."""
    script = Path(sys.executable).parent / "lumina-studio"
    env = {**os.environ, "LUMINA_STUDIO_HOME": str(data_home)}
    done = subprocess.run([str(script), "generate", "a cat", "--model", str(tiny_model), *SMALL, "--seed", "3",
                           "--out", str(tmp_path), "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["seed"] == 3
    bad = subprocess.run([str(script), "generate", "a cat", "--model", str(tiny_model), "--width", "30"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_onnx_backend_and_cache_from_the_command_line(capsys, tiny_model, onnx_engine, onnx_home, tmp_path, monkeypatch):
    monkeypatch.setenv("LUMINA_STUDIO_HOME", str(onnx_home))  # graphs already exported there
    code, out, err = run_cli(capsys, "export-onnx", "--model", str(tiny_model))
    assert code == 0 and str(onnx_engine.onnx_folder) in out and "CPUExecutionProvider" in out
    code, out, err = run_cli(capsys, "generate", "a red circle", "--model", str(tiny_model), *SMALL, "--seed", "2",
                             "--backend", "onnx", "--cache", "0.3", "--out", str(tmp_path), "--json")
    assert code == 0, err
    record = json.loads(out)
    assert (record["backend"], record["provider"], record["cache"]) == ("onnx", "CPUExecutionProvider", "0.3")
    assert 0 < record["joint_block_evaluations"] <= record["transformer_evaluations"]
    assert read_settings(record["path"])["cache"] == "0.3"


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "core.cli", *args], capture_output=True, timeout=timeout,
                          env={**os.environ, "LUMINA_STUDIO_DEBUG": ""})


@pytest.mark.parametrize("flag", ["prompt", "--negative"])
def test_prompt_bytes_that_are_not_utf8_are_one_clear_line_before_loading(tiny_model, tmp_path, flag):
    bad = b"a red \xff\xfe circle"
    args = [bad, "--negative", "x"] if flag == "prompt" else ["a red circle", "--negative", bad]
    out = _cli("generate", *args, "--model", str(tiny_model), "--out", str(tmp_path))
    err = out.stderr.decode()
    assert out.returncode == 1, err
    assert "not UTF-8" in error_line(err) and not list(tmp_path.iterdir())


@pytest.mark.timeout(120)  # without the early bar this test would wait for the whole 4096x4096 step
def test_a_size_above_the_models_own_warns_and_shows_progress_before_the_first_step(tmp_path):
    child = subprocess.Popen([sys.executable, "-m", "core.cli", "generate", "a red circle", "--width", "4096",
                              "--height", "4096", "--steps", "1", "--out", str(tmp_path)],
                             stderr=subprocess.PIPE, text=True)
    try:
        seen = ""
        while "0/1" not in seen:
            char = child.stderr.read(1)  # tqdm ends its lines with \r, not \n
            assert char, f"the run ended without a progress bar: {seen}"
            seen += char
        assert "warning: 4096x4096 is larger than the 64x64 this model was trained on" in seen
        assert "65,536 image tokens" in seen and "of memory" in seen
    finally:
        child.kill()
        child.wait()


def test_cache_thresholds_above_the_presets_are_allowed_with_a_note(capsys, tiny_model, tmp_path):
    code, _, err = run_cli(capsys, "generate", "a cat", "--model", str(tiny_model), *SMALL, "--cache", "2",
                           "--out", str(tmp_path))
    assert code == 0 and "above the presets" in err
    assert "higher values are allowed" in " ".join(_cli("generate", "--help").stdout.decode().split())


def test_images_made_into_the_library_are_indexed(capsys, tiny_model, data_home):
    from core.library import Library
    from core.storage import library_dir

    code, out, err = run_cli(capsys, "generate", "indexed at once", "--model", str(tiny_model), *SMALL,
                             "--seed", str(2**64 - 1))
    assert code == 0, err
    library = Library(library_dir())
    assert [(e.prompt, e.seed) for e in library.search()] == [("indexed at once", 2**64 - 1)]
    library.close()


def test_scenes_never_draws_over_an_existing_folder(capsys, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "scene-00000.png").write_bytes(b"my own picture")
    code, _, err = run_cli(capsys, "scenes", str(folder), "--count", "2")
    assert code == 1 and "not empty" in err
    assert (folder / "scene-00000.png").read_bytes() == b"my own picture"


def test_scenes_without_captions_and_its_help(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "scenes", str(tmp_path / "set"), "--count", "3", "--no-captions")
    assert code == 0 and "3 scenes without captions" in out
    assert len(list((tmp_path / "set").glob("*.png"))) == 3 and not list((tmp_path / "set").glob("*.txt"))
    code, out, _ = run_cli(capsys, "scenes", "--help")
    assert code == 0 and "(default: 1000)" in out and "--no-captions" in out


def test_generate_says_what_a_new_user_needs_to_know(capsys, tmp_path):
    code, _, err = run_cli(capsys, "generate", "A BLUE CIRCLE ON THE RIGHT", "--backend", "auto", "--steps", "2",
                           "--out", str(tmp_path / "out"), "--seed", "3")
    assert code == 0
    assert "does not know: BLUE, CIRCLE" in err and "in lower case" in err  # the demo tokenizer splits them
    assert "this run uses PyTorch" in err and "export-onnx --measure" in err and "exporting" not in err
    assert "stay out of the Gallery" in err
    code, out, _ = run_cli(capsys, "generate", "--help")
    assert "(default: 4.0)" in out and "(default: official)" in out and "(default: torch)" in out
