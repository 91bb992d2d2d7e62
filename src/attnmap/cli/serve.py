"""``attnmap serve``: the local web app. Standard library only at import time."""

from __future__ import annotations

import argparse
import errno
import math
import socket
import sys
import warnings

from .._errors import AttnmapError, AttnmapWarning

DEFAULT_PORT = 8765


def register(sub: argparse._SubParsersAction) -> None:
    from ._common import add_common

    p = sub.add_parser(
        "serve",
        help="the local web app: type a text, see its attention in the browser",
        description="Serve a page (text box, model choice, viewer, recent runs) and a JSON API "
        "(/api/…, described at /openapi.json) on 127.0.0.1. Only the models named here can "
        "be used.",
    )
    p.add_argument(
        "--model", "-m", metavar="MODEL", action="append", dest="models",
        help="a model the app may run: hub id, local directory, or 'default' for the bundled "
        "all-MiniLM-L6-v2; repeat for several (default: the bundled model)",
    )
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow these models' own Python code to run (only models you trust)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", "-p", type=int, default=DEFAULT_PORT,
                   help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="auto (default: cuda, else mps, else cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--torch-dtype", default="auto", metavar="DTYPE",
                   help="auto (default: float32 on the CPU, the checkpoint's dtype on a GPU), "
                   "float32, bfloat16 or float16")
    p.add_argument("--cmap", default="Blues", metavar="NAME",
                   help="matplotlib colormap of the heatmaps (default Blues, as `render`)")
    p.add_argument("--max-runs", type=int, default=32, metavar="N",
                   help="runs kept in memory, oldest evicted first (default 32)")
    p.add_argument("--max-mb", type=float, default=1024, metavar="MB",
                   help="memory for kept runs in MB; also the largest single run (default 1024)")
    p.add_argument("--max-body-kb", type=int, default=1024, metavar="KB",
                   help="largest request body in KB (default 1024)")
    p.add_argument("--timeout", type=float, default=120, metavar="SECONDS",
                   help="longest a request may work before it answers 504 (default 120)")
    p.add_argument("--max-new-tokens", type=int, default=256, metavar="N",
                   help="most tokens one live generation (Generate) may ask for (default 256)")
    p.add_argument("--body-timeout", type=float, default=30, metavar="SECONDS",
                   help="longest a client may take to send a request body before it gets "
                   "408 (default 30)")
    add_common(p)
    p.set_defaults(func=serve)


def _bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket here, so 'port in use' is a clear error and port 0 works."""
    if not 0 <= port <= 65535:
        raise AttnmapError(f"--port must be in 0..65535 (not {port})")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise AttnmapError(f"--host {host!r} is not an address of this machine") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise AttnmapError(
                f"port {port} is already in use; pick another with --port (0 picks a free one)"
            ) from None
        raise AttnmapError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _is_default_host(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1", "[::1]")


def serve(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise AttnmapError(
            "the app needs FastAPI and uvicorn: pip install 'attnmap[app]'"
        ) from None
    if args.max_runs < 1:
        raise AttnmapError(f"--max-runs must be at least 1 (not {args.max_runs})")
    for flag, value in (("--max-mb", args.max_mb), ("--max-body-kb", args.max_body_kb),
                        ("--timeout", args.timeout), ("--body-timeout", args.body_timeout)):
        if not (math.isfinite(value) and value > 0):
            raise AttnmapError(f"{flag} must be a positive, finite number (not {value})")
    if args.max_mb > 1024 * 1024:
        raise AttnmapError(f"--max-mb {args.max_mb:g} is more than 1 TB; give the memory "
                           "this machine can spare, in MB")
    if not _is_default_host(args.host):
        warnings.warn(
            f"serving on {args.host}, not the default 127.0.0.1: anyone who can reach that "
            "address can use the app and make it run the model",
            AttnmapWarning,
            stacklevel=1,
        )
    from ..viewer.colours import check_cmap

    check_cmap(args.cmap)  # a misspelt name fails before the port is taken
    sock = _bind(args.host, args.port)
    say = (lambda m: None) if args.quiet else (lambda m: print(f"attnmap: {m}", file=sys.stderr,
                                                                  flush=True))
    try:
        from ..app.server import create_app

        names = [None if m in ("default", "") else m for m in (args.models or [None])]
        say(f"loading {len(names)} model{'s' * (len(names) > 1)} …")
        app = create_app(
            names,
            max_runs=args.max_runs,
            max_bytes=int(args.max_mb * 1024 * 1024),
            max_body=args.max_body_kb * 1024,
            timeout=args.timeout,
            body_timeout=args.body_timeout,
            trust_remote_code=args.trust_remote_code,
            host=args.host,
            device=args.device,
            torch_dtype=args.torch_dtype,
            cmap=args.cmap,
            max_new_tokens=args.max_new_tokens,
        )
        port = sock.getsockname()[1]
        shown = args.host if args.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        if ":" in shown:
            shown = f"[{shown}]"
        url = f"http://{shown}:{port}/"
        print(f"attnmap: serving on {url}  (Ctrl+C to stop)", flush=True)
        config = uvicorn.Config(
            app,
            log_level="info" if args.debug else "warning",
            access_log=bool(args.debug),
            limit_concurrency=256,
            timeout_keep_alive=5,
        )
        server = uvicorn.Server(config)
        if not args.no_browser:
            import webbrowser

            # The socket is already listening, so the page loads once the loop starts.
            webbrowser.open(url)
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0
