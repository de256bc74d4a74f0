"""The `rmt` command line. Each sub-command lives next to the code it drives and registers itself here."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rmt", description="Recurrent Memory Transformer")
    sub = parser.add_subparsers(dest="command", required=True)
    # Imported lazily so `rmt --help` stays fast and one broken sub-command cannot hide the others.
    from rmt import bench, demo, generate, report, reproduce
    from rmt.tasks import commands as task_commands
    from rmt.training import commands as training_commands

    demo.register(sub)
    bench.register(sub)
    generate.register(sub)
    reproduce.register(sub)
    report.register(sub)
    training_commands.register(sub)
    task_commands.register(sub)
    from rmt.integrations import commands as integration_commands  # export, eval, memory (optional extras)

    integration_commands.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
