"""What every job script shares: importing cvray from a checkout, one-line errors, exit codes.

Jobs run as scripts (`python jobs/train_cifar.py`, also under `ray job submit --working-dir .`
where cvray is not installed), so the repository root goes on sys.path before cvray is imported.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from cvray.console import configure_logging  # noqa: E402
from cvray.errors import CvrayError  # noqa: E402

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line (no usage dump) and exits with 2."""

    def error(self, message: str):  # noqa: D401 - argparse's signature
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


class _DefaultsOnceFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to a flag's help unless the help already names its default or there
    is none worth showing (None, False, an unset preset value)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        is_switch = isinstance(action, (argparse._StoreConstAction, argparse.BooleanOptionalAction))
        if "default" in text or is_switch or not action.option_strings or any(
            default is nothing for nothing in (None, False, argparse.SUPPRESS)
        ):
            return text
        if isinstance(default, (tuple, list)):
            default = ",".join(str(v) for v in default)
        return f"{text} (default: {default})"


def make_parser(description: str) -> Parser:
    # No abbreviations: the sweep jobs pass the unknown flags on to the job's parser, and a prefix such
    # as --gpu would otherwise be taken for one of the sweep's own flags (--gpu-memory-gib).
    return Parser(description=description, formatter_class=_DefaultsOnceFormatter, allow_abbrev=False)


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


def run(main, argv=None) -> int:
    """Call main(argv) with the library's log lines on the console; turn a CvrayError into
    `error: ...` on stderr and exit code 2, Ctrl-C into one line and exit code 130."""
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")  # else worker prints show twice
    configure_logging()
    try:
        return main(argv) or 0
    except CvrayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        print(f"interrupted: {str(exc) or 'rerun the same command to resume'}", file=sys.stderr)
        return 130
