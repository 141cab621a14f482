"""`lumina-studio` command line. Bad input exits non-zero with one clear line on stderr, never a traceback."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from pathlib import Path

from .captioning import API_KEY_VARIABLE
from .cpu_budget import CpuWork
from .errors import Cancelled, LuminaError, RequestError
from .generation.request import COMPAT_NAMES, SOLVER_NAMES, GenerationRequest

PROG = "lumina-studio"


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (no usage block), and whose --help shows each
    option's default (unless its help already says what it is)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsShown)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class DefaultsShown(argparse.HelpFormatter):
    def _get_help_string(self, action):
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="Lumina-Image 2.0 on your own machine. Run `lumina-studio` "
                           "without a command to open the app.")
    commands = parser.add_subparsers(dest="command", parser_class=OneLineParser)

    gen = commands.add_parser("generate", help="make images from a prompt")
    gen.add_argument("prompt", help='the prompt ("" for an unconditional image)')
    gen.add_argument("--model", help="a diffusers folder, a single-file DiT, or a registered model name "
                                     "(default: the built-in demo model)")
    gen.add_argument("--components", help="diffusers folder with text encoder, tokenizer and VAE for a single-file DiT")
    gen.add_argument("--negative", dest="negative_prompt", default="",
                     help="negative prompt (encoded without a system prompt)")
    gen.add_argument("--system-prompt", default="real", help="real, align, base, aesthetics, 4grid, empty, or custom text")
    gen.add_argument("--width", type=int, help="default: the model's size (1024; the demo model: 64)")
    gen.add_argument("--height", type=int, help="default: the model's size (1024; the demo model: 64)")
    gen.add_argument("--steps", type=int, help="solver steps (default 18 official, 30 diffusers)")
    gen.add_argument("--guidance", type=float, default=4.0, help="CFG scale (1 = no guidance)")
    gen.add_argument("--cfg-trunc", type=float, help="official: guide while t < X (0.25); diffusers: cfg_trunc_ratio (1.0)")
    gen.add_argument("--cfg-renorm", type=float, help="official: clamp factor, 0 = off (1.0); diffusers: 0 = off, >0 = on")
    gen.add_argument("--solver", choices=SOLVER_NAMES, help="default midpoint (official), euler (diffusers)")
    gen.add_argument("--shift", type=float, help="time shift (default: the model's, 6)")
    gen.add_argument("--seed", type=int, help="seed of the first image; image i uses seed + i (default: random)")
    gen.add_argument("--count", type=int, default=1, help="number of images")
    gen.add_argument("--backend", default="torch", choices=("torch", "onnx", "auto"),
                     help="auto: whichever measured faster here for this model (measured once, remembered)")
    gen.add_argument("--cache", default="off",
                     help="off, or a threshold for skipping joint blocks: the presets are 0.2, 0.3, 0.5; higher "
                          "values are allowed and skip more (softer images; 1 or more skips nearly every step the "
                          "cap allows); v2:X picks the v2 coefficients")
    gen.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                     help="where the model runs (auto: a CUDA GPU when there is one)")
    gen.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                     help="precision (auto: bf16 on a GPU that has it, else fp16; fp32 on the CPU)")
    gen.add_argument("--low-vram", default="auto", choices=("auto", "on", "off"),
                     help="keep only the component in use on the GPU (auto: when the model does not fit)")
    gen.add_argument("--compat", default="official", choices=COMPAT_NAMES,
                     help="official sampling, or diffusers' Lumina2Pipeline's to match images made with it")
    gen.add_argument("--out", help="output folder (default: the library folder)")
    gen.add_argument("--store-model-path", action="store_true",
                     help="also store the model's file path in each image (default: its name and hash only, so an "
                          "image you share does not show your folders)")
    gen.add_argument("--json", action="store_true", help="print one JSON object per image on stdout")

    export = commands.add_parser("export-onnx", help="export a model for the ONNX Runtime backend ahead of time")
    export.add_argument("--model", help="a diffusers folder, a single-file DiT, or a registered model name")
    export.add_argument("--components", help="diffusers folder with text encoder, tokenizer and VAE for a single-file DiT")
    export.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where the graphs will run")
    export.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="graph precision (auto: fp32 for the CPU, bf16 for CUDA)")
    export.add_argument("--measure", action="store_true",
                        help="also time both backends here and remember the faster, for --backend auto")

    cap = commands.add_parser("caption", help="caption a folder of images with a local model or server")
    cap.add_argument("folder", help="the images' folder; captions go to a .txt beside each image")
    source = cap.add_mutually_exclusive_group()
    source.add_argument("--model", help="a transformers model folder (LLaVA/JoyCaption, Qwen2/2.5/3-VL, BLIP, "
                                        "BLIP-2, Florence-2); default: the built-in demo captioner")
    source.add_argument("--server", help="an OpenAI-compatible server's base URL, e.g. http://127.0.0.1:8000/v1")
    cap.add_argument("--server-model", help="the server's model id (default: the first it lists)")
    cap.add_argument("--api-key", default=os.environ.get(API_KEY_VARIABLE),
                     help=f"the server's API key, if it wants one (default: ${API_KEY_VARIABLE}; a key on the "
                          "command line is visible to other users of this computer, the variable is not)")
    cap.add_argument("--concurrency", type=int, default=4, help="requests in flight at once (--server)")
    cap.add_argument("--style", default="detailed",
                     help="detailed, medium, short, tags; several comma-separated write one line each")
    cap.add_argument("--prompt", default="", help="a custom question instead of the styles; may use {name}, "
                                                  "{folder}, {caption}")
    cap.add_argument("--system", default="", help="a system prompt instead of the styles' own")
    cap.add_argument("--prefix", default="", help="text put before each caption")
    cap.add_argument("--suffix", default="", help="text put after each caption")
    cap.add_argument("--mode", default="skip", choices=("skip", "overwrite", "append"),
                     help="skip images with a caption (default), overwrite it, or append new lines")
    cap.add_argument("--batch", type=int, default=8, help="images per model call (halved on out-of-memory)")
    cap.add_argument("--max-tokens", type=int, help="new tokens per caption (default: the model's, else 512)")
    cap.add_argument("--greedy", action="store_true", help="greedy decoding instead of the model's sampling settings")
    cap.add_argument("--recursive", action="store_true", help="include sub-folders")
    cap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    cap.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    cap.add_argument("--gpus", type=int, default=1, help="one process per GPU (through accelerate), each "
                                                         "captioning its share of the images")
    cap.add_argument("--lumina-model", help="whose tokenizer measures caption length (default: the demo model)")
    cap.add_argument("--json", action="store_true", help="print one JSON object per image on stdout")

    export_checkpoint = commands.add_parser(
        "export-checkpoint", help="write a training checkpoint (or any model folder) for ComfyUI, the authors' "
                                  "code or diffusers")
    export_checkpoint.add_argument("checkpoint", help="a run's checkpoint folder (RUN/checkpoints/step-N) or a "
                                                      "diffusers model folder")
    export_checkpoint.add_argument("--format", required=True, choices=("comfyui", "original", "diffusers"),
                                   help="comfyui: one file for Load Diffusion Model; original: the authors' layout; "
                                        "diffusers: a complete folder")
    export_checkpoint.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"),
                                   help="precision of the weights written")
    export_checkpoint.add_argument("--out", help="the file (or folder, for diffusers) to write; it must not exist "
                                                 "(default: RUN/exports/RUN-step-N-FORMAT-DTYPE.safetensors)")
    export_captions = commands.add_parser("export-captions", help="export a captioned folder for training")
    export_captions.add_argument("folder", help="the captioned images' folder")
    export_captions.add_argument("--format", required=True, choices=("txt", "imagefolder", "jsonl"),
                                 help="txt: images copied with a .txt each; imagefolder: images + metadata.jsonl; "
                                      "jsonl: the Lumina authors' {path, prompt} file (one item per caption)")
    export_captions.add_argument("--out", required=True, help="a new or empty folder outside FOLDER (txt, "
                                 "imagefolder) or a new .jsonl file")
    export_captions.add_argument("--force", action="store_true", help="replace an existing .jsonl file (jsonl only)")
    export_captions.add_argument("--approved-only", action="store_true",
                                 help="only images approved in the Caption tab's review")
    export_captions.add_argument("--recursive", action="store_true", help="include sub-folders")

    # Training lives in trainer/ (a layer above core); its own parser reads these arguments.
    commands.add_parser("train", help="fine-tune in stages from a config (see: train --help)", add_help=False)

    world = commands.add_parser(
        "scenes", help="draw a dataset of flat-shape scenes with captions (the demo's world)",
        description="Draw pictures of the demo model's world (coloured shapes on a plain background) with a .txt "
                    "caption beside each: a dataset to try captioning (--no-captions), reviewing and training on "
                    "without any real model.")
    world.add_argument("folder", help="a new or empty folder to draw into")
    world.add_argument("--count", type=int, default=1000, help="how many pictures")
    world.add_argument("--seed", type=int, default=0, help="the first scene's seed (the same seed draws the same set)")
    world.add_argument("--pairs", type=float, default=0.4, help="share of scenes with two shapes and a relation")
    world.add_argument("--no-captions", action="store_true",
                       help="pictures only, no .txt: work for the captioner (lumina-studio caption FOLDER)")

    evaluate = commands.add_parser("evaluate", help="measure prompt alignment on prompts from the scene world")
    evaluate.add_argument("--model", default="demo", help="a model path or registered name (default: demo)")
    evaluate.add_argument("--count", type=int, default=200, help="prompts (about 40%% with two shapes)")
    evaluate.add_argument("--seed", type=int, default=1000,
                          help="the first scene's seed; the default's prompts are held out of the demo's training")
    evaluate.add_argument("--steps", type=int, help="sampling steps (default: the model's own)")
    evaluate.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale")
    evaluate.add_argument("--cache", default="off", help="step cache, as for generate")
    evaluate.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    evaluate.add_argument("--out", help="also save the generated images here")
    evaluate.add_argument("--json", action="store_true",
                          help="print the report as JSON (and the progress as JSON lines on stderr)")

    models = commands.add_parser("models", help="list (the default), add or remove models")
    model_commands = models.add_subparsers(dest="models_command", parser_class=OneLineParser)
    model_commands.add_parser("list", help="list the models: the built-in demo, then the ones added")
    add = model_commands.add_parser("add", help="register a diffusers folder or a single-file DiT")
    add.add_argument("path")
    add.add_argument("--name")
    add.add_argument("--components")
    remove = model_commands.add_parser("remove", help="forget a registered model (files stay)")
    remove.add_argument("name")
    return parser


def request_from_args(args) -> GenerationRequest:
    request = GenerationRequest.from_values(vars(args))  # the options are named as the request's fields
    request.validate()
    return request


def run_generate(args) -> int:
    request = request_from_args(args)  # fail fast, before any model is loaded
    from tqdm import tqdm

    from .generation.engine import Engine
    from .library import Library
    from .metadata import check_writable
    from .models.registry import DEMO_NAME, find_model
    from .sampling.cache import APP_PRESETS, CacheSettings
    from .scenes.world import vocabulary_warning
    from .storage import library_dir

    out_dir = Path(args.out).expanduser() if args.out else library_dir()
    check_writable(out_dir)
    library = Library(out_dir) if out_dir.resolve() == library_dir().resolve() else None  # the Gallery sees them
    engine = Engine(find_model(args.model, args.components), device=args.device, dtype=args.dtype,
                    low_vram=args.low_vram, backend=args.backend, on_export=export_progress(),
                    measure_backends=False)  # auto without a measurement: PyTorch now, as the app does
    engine.load()
    if not engine.backend_measured:
        model = f" --model {args.model}" if args.model else ""
        print(f"{PROG}: note: --backend auto: the backends are not measured here for this model yet, so this run "
              f"uses PyTorch. Measure once (it exports ONNX graphs): lumina-studio export-onnx{model} --measure",
              file=sys.stderr)
    if library is None:
        print(f"{PROG}: note: images saved in {out_dir} stay out of the Gallery (it shows the library folder, the "
              "default without --out); File → Open image loads their settings.", file=sys.stderr)
    resolved = engine.resolve(request)
    notes = engine.prompt_warnings(resolved)
    if engine.source.name == DEMO_NAME:
        notes.append(vocabulary_warning(request.prompt))
    for note in filter(None, notes):
        print(f"{PROG}: warning: {note}", file=sys.stderr)
    cache = CacheSettings.parse(request.cache)
    if cache and cache.threshold > max(float(p) for p in APP_PRESETS[1:]):
        print(f"{PROG}: warning: --cache {request.cache} is above the presets (0.2, 0.3, 0.5): more steps are "
              "skipped and images get softer.", file=sys.stderr)

    bar = None

    def start_bar(index):  # shown before the first step: a large image's first step can take minutes
        nonlocal bar
        bar = tqdm(total=resolved.steps, desc=f"image {index + 1}/{request.count}", unit="step", file=sys.stderr,
                   leave=False, mininterval=0)
        bar.refresh()

    def on_step(index, info):
        bar.update(info.step - bar.n)

    finished = []

    def on_image(result):
        bar.close()
        if library is not None:
            library.add(result.path)
        if args.json:
            settings = result.settings
            print(json.dumps({
                "path": str(result.path),
                "seed": settings["seed"],
                "width": settings["width"],
                "height": settings["height"],
                "steps": settings["steps"],
                "solver": settings["solver"],
                "guidance": settings["guidance"],
                "compat": settings["compat"],
                "model": engine.model_info["name"],
                "model_hash": engine.model_info["hash"],
                "device": engine.run_info["device"],
                "dtype": engine.run_info["dtype"],
                "backend": engine.run_info["backend"],
                "provider": engine.run_info["provider"],
                "cache": settings["cache"],
                "transformer_evaluations": result.evaluations,
                "joint_block_evaluations": result.joint_evaluations,
                "timings": {k: round(v, 4) for k, v in result.timings.items()},
            }), flush=True)
        else:
            print(f"{result.path}  (seed {result.settings['seed']}, {result.timings['total_s']:.1f} s)", flush=True)
        finished.append(result.path)
        if len(finished) < request.count:
            start_bar(len(finished))

    start_bar(0)
    with CpuWork("generation", engine.device.type):
        engine.generate(request, out_dir=out_dir, on_step=on_step, on_image=on_image,
                        model_path=args.store_model_path)
    return 0


def export_progress():
    """A progress bar over the exported graphs (the first ONNX use of a model takes a while)."""
    from tqdm import tqdm

    bar = None

    def on_graph(done, name):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=4, desc="exporting to ONNX", unit="graph", file=sys.stderr)
        bar.update(done - bar.n)
        if name is None:
            bar.close()
        else:
            bar.set_postfix_str(name)

    return on_graph


def run_export(args) -> int:
    from .generation.engine import Engine
    from .models.registry import find_model

    engine = Engine(find_model(args.model, args.components), device=args.device, dtype=args.dtype,
                    backend="onnx", on_export=export_progress())
    engine.load()
    print(f"{engine.onnx_folder}  ({engine.run_info['provider']}, {engine.run_info['dtype']})")
    if args.measure:
        print(f"faster here: {engine.measure_backends()} (generate --backend auto uses it from now on)")
    return 0


def run_models(args) -> int:
    from .models.registry import add_model, available_models, list_models, remove_model
    from .storage import human_size

    if args.models_command in (None, "list"):
        for entry in available_models():
            size = human_size(entry["size_bytes"]) if "size_bytes" in entry else "-"
            print(f"{entry['name']}\t{entry['kind']}\t{size}\t{entry['path']}")
        if not list_models():
            print("No models added yet. Add one with: lumina-studio models add PATH", file=sys.stderr)
    elif args.models_command == "add":
        entry = add_model(args.path, args.name, args.components)
        print(f"Added '{entry['name']}' ({entry['kind']}, {human_size(entry['size_bytes'])} of DiT weights).")
    else:
        remove_model(args.name)
        print(f"Removed '{args.name}' (its files were not touched).")
    return 0


def run_scenes(args) -> int:
    from tqdm import tqdm

    from .exports import check_folder_target
    from .scenes.world import write_dataset

    if args.count < 1 or not 0 <= args.pairs <= 1:
        raise RequestError("--count must be at least 1 and --pairs between 0 and 1.")
    check_folder_target(Path(args.folder), [])  # a new or empty folder: an existing dataset is never drawn over
    with tqdm(total=args.count, desc="drawing scenes", unit="img", file=sys.stderr) as bar:
        write_dataset(args.folder, args.count, args.seed, args.pairs, on_progress=lambda n: bar.update(1),
                      captions=not args.no_captions)
    print(f"{args.count} scenes {'without' if args.no_captions else 'with'} captions in {args.folder}")
    return 0


def run_evaluate(args) -> int:
    from .generation.engine import Engine
    from .models.registry import find_model
    from .scenes.alignment import evaluate

    if args.count < 1:
        raise RequestError("--count must be at least 1.")
    from tqdm import tqdm

    engine = Engine(find_model(args.model), device=args.device)
    engine.load()
    with tqdm(total=args.count, desc="scoring prompts", unit="prompt", file=sys.stderr, disable=args.json) as bar:
        def progress(done: int, total: int) -> None:
            work.refresh()
            bar.update(done - bar.n)
            if args.json:  # for the app: one JSON line per image on stderr, the report on stdout
                print(json.dumps({"done": done, "total": total}), file=sys.stderr, flush=True)

        with CpuWork("evaluation", engine.device.type) as work:
            report = evaluate(engine, args.count, args.seed, Path(args.out) if args.out else None,
                              on_progress=progress, steps=args.steps, guidance=args.guidance, cache=args.cache)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.describe())
    return 0


def run_caption(args) -> int:
    from .captioning import is_loopback
    from .captioning.job import CaptionRun, CaptionSettings, check_folder
    from .captioning.service import CaptionerOptions, device_kind, open_captioner
    from .captioning.tokens import lumina_token_counter
    from .captioning.workers import launch_shards, this_share

    settings = CaptionSettings(folder=args.folder, styles=[s.strip() for s in args.style.split(",") if s.strip()],
                               custom_prompt=args.prompt, system_prompt=args.system, prefix=args.prefix,
                               suffix=args.suffix, mode=args.mode, recursive=args.recursive, batch=args.batch,
                               max_tokens=args.max_tokens, sampling={"do_sample": False} if args.greedy else None)
    settings.check()  # fail fast, before a model loads
    if args.prompt and not args.model and not args.server:
        print(f"{PROG}: warning: the built-in demo captioner knows only its styles' questions and ignores "
              "--prompt; use a model folder (--model) or a server (--server) for your own question", file=sys.stderr)
    check_folder(Path(args.folder).expanduser())
    if args.gpus > 1 and "WORLD_SIZE" not in os.environ:
        return launch_shards(args.gpus, args.argv, args.device)
    share, rank, device = this_share(args.device)
    from tqdm import tqdm

    if args.server and not is_loopback(args.server):
        print(f"{PROG}: warning: {args.server} is not this computer: every image is sent to it", file=sys.stderr)
    options = CaptionerOptions(model=args.model, server=args.server, server_model=args.server_model,
                               api_key=args.api_key, concurrency=args.concurrency, device=device, dtype=args.dtype)
    captioner = open_captioner(options)
    run = CaptionRun(settings, captioner, lumina_token_counter(args.lumina_model))
    bar = tqdm(desc=f"captioning with {captioner.name}", unit="img", file=sys.stderr, disable=rank > 0)

    def on_result(outcome):
        if args.json:
            print(json.dumps({"image": outcome.image, "captions": outcome.captions, "error": outcome.error,
                              "tokens": [w["tokens"] for w in outcome.written]}), flush=True)

    def on_progress(done, total, eta):
        work.refresh()
        bar.total = total
        bar.update(done - bar.n)

    with CpuWork("captioning", device_kind(captioner)) as work:
        summary = run.run(on_result=on_result, on_progress=on_progress, share=share)
    bar.close()
    for line in summary.failed:
        print(f"{PROG}: could not caption {line}", file=sys.stderr)
    print(f"{PROG}: {summary.describe()}", file=sys.stderr)
    return 4 if summary.failed else 0


def run_export_checkpoint(args) -> int:
    from .models.export import default_output, export_model

    stop_on_sigterm()  # the app's Cancel: the export being written is removed
    source = Path(args.checkpoint).expanduser()
    out = Path(args.out).expanduser() if args.out else default_output(source, args.format, args.dtype)
    print(export_model(source, args.format, args.dtype, out))
    return 0


def run_export_captions(args) -> int:
    from .captioning.review import CaptionDataset

    folder = Path(args.folder).expanduser()
    if not folder.is_dir():
        raise RequestError(f"{folder} is not a folder.")
    dataset = CaptionDataset(folder, recursive=args.recursive)
    try:
        counts = dataset.export(args.format, Path(args.out).expanduser(), args.approved_only, replace=args.force)
    finally:
        dataset.close()
    print(f"{counts['images']} images, {counts['captions']} captions -> {args.out} ({counts['left_out_uncaptioned']} "
          f"without a caption left out" + (f", {counts['left_out_unapproved']} not approved" if args.approved_only
                                          else "") + ")")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The core commands (`lumina-studio` itself, with the app and the trainer, is lumina_studio.main)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    if args.command in (None, "train"):  # only through lumina-studio, which dispatches these itself
        parser.error("give a command: generate, caption, export-onnx, models, scenes or evaluate (see --help)")
    commands = {"generate": run_generate, "export-onnx": run_export, "models": run_models, "scenes": run_scenes,
                "evaluate": run_evaluate, "caption": run_caption, "export-captions": run_export_captions,
                "export-checkpoint": run_export_checkpoint}
    return report_errors(PROG, commands[args.command], args)


def stop_on_sigterm() -> None:
    """SIGTERM (the app's Cancel or Stop) ends a command as Ctrl+C does: its cleanup runs."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def report_errors(prog: str, command, *args) -> int:
    """Run a command; a problem becomes one line on stderr and an exit code, never a traceback."""
    try:
        return command(*args)
    except (Cancelled, KeyboardInterrupt):
        print(f"{prog}: cancelled", file=sys.stderr)
        return 130
    except LuminaError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"{prog}: error: out of memory. Try a smaller size, --low-vram on, or --dtype bf16.", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: one line for the person, the traceback on request
        if os.environ.get("LUMINA_STUDIO_DEBUG"):
            traceback.print_exc()
        name = type(exc).__name__
        if "OutOfMemory" in name:
            print(f"{prog}: error: the GPU ran out of memory. Try --low-vram on or a smaller size.", file=sys.stderr)
        else:
            print(f"{prog}: internal error ({name}: {exc}). Set LUMINA_STUDIO_DEBUG=1 for details.", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
