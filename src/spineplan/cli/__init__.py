"""The ``spineplan`` command line.

Each command lives in its own module ``spineplan.cli.<name>`` that defines

- ``HELP``: a one-line description,
- ``configure(parser)``: adds the command's arguments (no heavy imports here), and
- ``run(args) -> int``: does the work (heavy imports inside).

:func:`main` prints a :class:`~spineplan.errors.SpinePlanError` as one paragraph without a
traceback and returns its exit code, so tests can call ``main([...])`` directly.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import textwrap

from spineplan import DISCLAIMER, __version__
from spineplan.errors import SpinePlanError

#: Command name -> module, in the order ``--help`` lists them.
COMMANDS: dict[str, str] = {
    "demo": "spineplan.cli.demo",
    "info": "spineplan.cli.info",
    "phantom": "spineplan.cli.phantom",
    "segment": "spineplan.cli.segment",
    "anatomy": "spineplan.cli.anatomy",
    "plan": "spineplan.cli.plan",
    "check": "spineplan.cli.check",
    "views": "spineplan.cli.views",
    "drr": "spineplan.cli.drr",
    "register": "spineplan.cli.register",
    "levelcheck": "spineplan.cli.levelcheck",
    "report": "spineplan.cli.report",
}


def _get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spineplan",
        description="From a spine CT to a minimally invasive surgical plan. " + DISCLAIMER,
    )
    parser.add_argument("--version", action="version", version=f"spineplan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in COMMANDS.items():
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name == modname:  # command not built yet
                continue
            raise
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        mod.configure(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _get_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 1
    try:
        return int(args._run(args) or 0)
    except SpinePlanError as exc:
        msg = textwrap.fill(str(exc), width=100, break_long_words=False, break_on_hyphens=False)
        print(f"spineplan {args.command}: error: {msg}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("spineplan: interrupted; no partial outputs were kept.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
