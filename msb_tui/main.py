"""``msb-tui`` entry point: the workbench, or ``--headless`` the server."""

from __future__ import annotations

import argparse
from pathlib import Path

from msb_tui.workbench import Workbench

BACKENDS = ("auto", "qemu", "gvisor", "krun")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")  # engine.server.settings.LOG_LEVELS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msb-tui", description="msb terminal workbench")
    parser.add_argument("-f", "--file", type=Path, default=None,
                        help="the Sandboxfile (default: the nearest one from here upwards)")  # fmt: skip
    parser.add_argument("--server", metavar="URL", default=None, help="work against a remote msb server")
    parser.add_argument("--api-key", default=None,
                        help="API key for --server (env MSB_API_KEY); --headless: a static key clients may send "
                        "(16+ characters, as `msb server start --api-key`)")  # fmt: skip
    parser.add_argument("--theme", choices=["msb-dark", "msb-light"], default="msb-dark")
    parser.add_argument("--headless", action="store_true",
                        help="run the engine as a server (same as `msb server start`), no UI")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--dev", action="store_true", default=None, help="server without authentication")
    parser.add_argument("--key", default=None, help="server secret (env MSB_SERVER_KEY)")
    parser.add_argument("--storage-path", type=Path, default=None,
                        help="--headless: the server's state directory (default ~/.msb; env MSB_STORAGE_PATH)")
    parser.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, default=None,
                        help="--headless: server log level (default info; env MSB_LOG_LEVEL)")
    parser.add_argument("--backend", choices=BACKENDS, type=str.lower, default=None,
                        help="what isolates the sandboxes started here (--headless: the server's one backend); "
                        "default: the Sandboxfile's backend:, then MSB_BACKEND, else auto (`msb doctor`)")  # fmt: skip
    parser.add_argument("--pool", dest="pools", action="append", metavar="IMAGE[=N]", default=None,
                        help="--headless: keep N warm ephemeral sandboxes of IMAGE (repeatable; env MSB_POOL)")
    parser.add_argument("--pool-max-mib", type=float, default=None,
                        help="--headless: memory bound of all pool members in MiB (env MSB_POOL_MAX_MIB)")
    return parser


def make_workbench(args: argparse.Namespace) -> Workbench:
    """The workbench the flags ask for (raises MsbError with a hint if it cannot be made)."""
    from engine.errors import ConfigError

    if args.server:
        from msb_tui.remote import RemoteWorkbench

        if args.backend:
            raise ConfigError("--backend does not apply to --server: a server runs all its sandboxes on one backend",
                              hint="choose it where the server starts: `msb server start --backend NAME`")  # fmt: skip
        return RemoteWorkbench(args.server, api_key=args.api_key)
    from msb_tui.local import LocalWorkbench

    return LocalWorkbench.open(args.file, backend=args.backend)


def main() -> None:
    """Entry point of the ``msb-tui`` console script."""
    args = _parser().parse_args()
    from engine.errors import MsbError

    if args.headless:
        from engine.server.main import serve
        from engine.server.settings import ServerSettings, parse_pools

        try:
            pools = parse_pools(args.pools) if args.pools else None
            settings = ServerSettings.from_env(host=args.host, port=args.port, dev=args.dev, key=args.key,
                                               api_key=args.api_key, storage=args.storage_path,
                                               log_level=args.log_level, backend=args.backend, pools=pools,
                                               pool_max_mib=args.pool_max_mib)  # fmt: skip
            serve(settings)
        except MsbError as exc:
            hint = f"\nmsb-tui: hint: {exc.hint}" if exc.hint else ""
            raise SystemExit(f"msb-tui: error: {exc.message}{hint}") from None
        return
    try:
        workbench = make_workbench(args)
    except MsbError as exc:
        hint = f"\nmsb-tui: hint: {exc.hint}" if exc.hint else ""
        raise SystemExit(f"msb-tui: error: {exc.message}{hint}") from None
    from msb_tui.app import MsbApp

    MsbApp(workbench, theme=args.theme).run()


if __name__ == "__main__":
    main()
