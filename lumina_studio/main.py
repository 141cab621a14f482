"""`lumina-studio`: no command opens the app; `train` hands over to the trainer; the rest are core's."""

from __future__ import annotations

import subprocess
import sys


def run_train(train_args: list[str]) -> int:
    """The trainer's own command line, in a child process: its accelerate processes then outlive nothing of
    ours, and a Ctrl+C reaches it too (it saves and stops; we keep waiting for it). A SIGTERM (kill, `timeout`,
    a service manager) is passed on to it, where it is the same stop request, instead of ending only us."""
    import signal

    child = subprocess.Popen([sys.executable, "-m", "trainer", *train_args])
    signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signal.SIGTERM))
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:
            continue


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        return run_train(argv[1:])
    if argv[:1] == ["compare"]:  # the trainer's: it reads a run folder
        from trainer.compare import main as compare_main

        return compare_main(argv[1:])
    if not argv:
        from app.main_window import run  # the app: Qt only, torch stays in the engine process

        return run([sys.argv[0]])
    from core.cli import main as core_main

    return core_main(argv)
