"""`xmodal serve`: the HTTP API and the web page, with uvicorn.

The options travel to the app as `XMODAL_*` environment variables and uvicorn builds it with
`api.app:create_app` (the CLI never imports the API package itself).
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from cli import output
from cli.errors import EXIT_USAGE, fail, translate_errors


@translate_errors
def serve(
    db: Path | None = typer.Option(None, "--db", envvar="XMODAL_DB", help="Collection directory to serve."),
    model: str | None = typer.Option(None, "--model", "-m", envvar="XMODAL_MODEL",
                                     help="Model spec (default: the one the collection was built with)."),
    generator: str | None = typer.Option(None, "--generator", envvar="XMODAL_GENERATOR",
                                         help="What draws when nothing matches: the model's own (default), 'none', "
                                              "a generator directory or diffusers:SOURCE[?steps=N&guidance=W]."),
    host: str = typer.Option("127.0.0.1", "--host", envvar="XMODAL_HOST",
                             help="Address to listen on. Anything but loopback needs --api-key."),
    port: int = typer.Option(8000, "--port", envvar="XMODAL_PORT", min=1, max=65535),
    api_key: str | None = typer.Option(None, "--api-key", envvar="XMODAL_API_KEY", show_default=False,
                                       help="Require `Authorization: Bearer KEY` (at least 16 characters)."),
    api_key_file: Path | None = typer.Option(None, "--api-key-file", envvar="XMODAL_API_KEY_FILE",
                                             help="Read the key from this file's first line instead: a key on "
                                                  "the command line is visible to every local user (ps)."),
    allowed_host: list[str] = typer.Option([], "--allowed-host",
                                           help="Host name to answer to besides the loopback names and the "
                                                "bind address (repeatable). '*' accepts any."),
    cors_origin: list[str] = typer.Option([], "--cors-origin", help="Origin allowed to call the API from a "
                                                                    "browser (repeatable; default: none)."),
    max_upload_mb: float = typer.Option(25.0, "--max-upload-mb", min=0.01, help="Largest upload, in MiB."),
    max_active_searches: int = typer.Option(32, "--max-active-searches", min=1,
                                            help="Searches answered at once; more are told to retry (429)."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level: warning, info, debug."),
) -> None:
    """Serve the search API and the web page for one collection (http://127.0.0.1:8000 by default)."""
    from retrieval.compose import collection_info
    from retrieval.settings import ServerSettings, ServerSettingsError, load_settings

    settings = load_settings(db=db, model=model, generator=generator)
    if api_key_file is not None:
        if api_key:
            raise fail("give --api-key or --api-key-file, not both", EXIT_USAGE)
        api_key = _read_key(api_key_file)
    server = ServerSettings(host=host, port=port, api_key=api_key or None, allowed_hosts=tuple(allowed_host),
                            cors_origins=tuple(cors_origin), max_upload_bytes=int(max_upload_mb * 2**20),
                            max_active_searches=max_active_searches)
    try:
        server.checked()
    except ServerSettingsError as error:
        raise fail(str(error), EXIT_USAGE) from None
    details = collection_info(settings)  # fails now, with one line, if there is no collection
    os.environ.update(server.to_environment())
    os.environ["XMODAL_DB"] = str(settings.db_dir)
    if settings.model:
        os.environ["XMODAL_MODEL"] = settings.model
    if settings.generator:
        os.environ["XMODAL_GENERATOR"] = settings.generator
    import uvicorn

    shown = f"[{host}]" if ":" in host else host
    output.stderr.print(f"serving {details.items['image']} images and {details.items['audio']} sounds from "
                        f"{details.db_dir} at http://{shown}:{port}", highlight=False)
    uvicorn.run("api.app:create_app", factory=True, host=host, port=port, log_level=log_level,
                proxy_headers=False, server_header=False, timeout_graceful_shutdown=10)


def _read_key(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise fail(f"cannot read the API key file {path}: {error}", EXIT_USAGE) from None
    if not lines or not lines[0].strip():
        raise fail(f"the API key file {path} is empty", EXIT_USAGE)
    return lines[0].strip()
