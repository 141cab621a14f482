"""`python -m lumina_studio` = `lumina-studio`."""

import sys

from .main import main

sys.exit(main())
