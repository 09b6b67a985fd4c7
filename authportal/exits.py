"""Exit codes and the configuration-error report, the same for `serve` and every other command.

Here rather than in `cli/` so that the server reports a bad configuration without importing the CLI.
"""
from __future__ import annotations

import sys

from .config import ConfigError

#: 0 ok, 1 runtime failure (a backend down, a database refused), 2 usage or configuration error.
EXIT_RUNTIME = 1
EXIT_CONFIG = 2


def report_config_errors(exc: ConfigError) -> None:
    """Every problem, one per line under a heading, on stderr."""
    print(f"configuration error{'s' if len(exc.errors) > 1 else ''}:", file=sys.stderr)
    for line in exc.errors:
        print(f"  {line}", file=sys.stderr)
