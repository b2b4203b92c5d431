"""`miles-deep`: a thin layer that resolves options and calls the library.

Each command lives in its own module and registers itself on `app` when imported.
"""

from __future__ import annotations

import sys

from milesdeep.cli.app import app, run_app

# Importing a command module registers its command(s).
from milesdeep.cli import tag  # noqa: F401,E402  isort: skip
from milesdeep.cli import edit  # noqa: F401,E402  isort: skip
from milesdeep.cli import sample  # noqa: F401,E402  isort: skip
from milesdeep.cli import engine  # noqa: F401,E402  isort: skip
from milesdeep.cli import calibrate  # noqa: F401,E402  isort: skip
from milesdeep.cli import models  # noqa: F401,E402  isort: skip
from milesdeep.cli import bench  # noqa: F401,E402  isort: skip


def main() -> None:
    sys.exit(run_app(sys.argv[1:]))


__all__ = ["app", "main"]
