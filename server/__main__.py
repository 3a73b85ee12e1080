"""`python -m server` is `tessera`."""

import sys

from .cli import main

sys.exit(main())
