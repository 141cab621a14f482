"""`python -m trainer` = `lumina-studio train`."""

import sys

from .cli import main

sys.exit(main())
