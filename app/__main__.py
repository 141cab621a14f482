"""`python -m app` opens Lumina Studio (the same as `lumina-studio` without arguments)."""

import sys

from app.main_window import run

sys.exit(run())
