"""The ``msb`` command line (exit codes: engine/cli/common.py)."""

from __future__ import annotations

import logging
import sys

import click

from engine.cli.doctor import doctor
from engine.cli.exe import exe
from engine.cli.images import register as register_image_commands
from engine.cli.install import register as register_install_commands
from engine.cli.project import register as register_project_commands
from engine.cli.run import register as register_run_commands
from engine.cli.server import server as server_group
from engine.server.settings import LOG_LEVELS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(None, "-V", "--version", package_name="msb", prog_name="msb", message="%(prog)s %(version)s")
@click.option("--log-level", envvar="MSB_LOG_LEVEL", default="warning", show_default=True,
              type=click.Choice(LOG_LEVELS, case_sensitive=False))
def cli(log_level: str) -> None:
    """msb — run untrusted code in microVM sandboxes."""
    logging.basicConfig(level=log_level.upper(), format="msb: %(levelname)s: %(message)s")


register_project_commands(cli)
register_run_commands(cli)
cli.add_command(exe)
register_install_commands(cli)
register_image_commands(cli)
cli.add_command(server_group)
cli.add_command(doctor)


def main() -> None:
    """Entry point of the ``msb`` console script."""
    try:
        cli(prog_name="msb")
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
