"""The layering rules of ARCHITECTURE.md: core imports nothing of ours above it; the app stays torch-free."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = ("app", "core", "trainer", "lumina_studio")


def imported_packages(folder: str) -> dict[str, set[str]]:
    """For each module file below `folder`: the top-level packages of ours it imports (anywhere in it)."""
    found = {}
    for path in (ROOT / folder).rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names & set(OURS)
    return found


def test_core_imports_neither_app_nor_trainer():
    offenders = {path: names - {"core"} for path, names in imported_packages("core").items() if names - {"core"}}
    assert offenders == {}


def test_nothing_imports_the_app_but_the_entry_point():
    for folder in ("core", "trainer"):
        assert not [path for path, names in imported_packages(folder).items() if "app" in names]


def test_the_app_and_the_train_tabs_modules_never_import_torch():
    code = ("import sys\nimport app.main_window, app.job_queue, app.worker_client, app.train_wizard, app.caption_panel, "
            "core.captioning.review, trainer.run_folder, trainer.config, trainer.plan\n"
            "print(sorted(m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stderr
