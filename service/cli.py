"""``intentlm serve``: flags over ``INTENTLM_*`` settings, then uvicorn with a draining shutdown."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import click


def settings_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """One flag per ``Settings`` field, its help text the field's description: the settings model is the
    only place a knob, its default and its INTENTLM_ variable are written down."""
    from service.config import Settings

    for name, field in reversed(Settings.model_fields.items()):
        flag = "--" + name.replace("_", "-")
        default = field.default.get_secret_value() if hasattr(field.default, "get_secret_value") else field.default
        shown = "unset" if default is None else default
        help_text = f"{field.description} [INTENTLM_{name.upper()}; default: {shown}]"
        annotation = field.annotation
        if annotation is bool:
            decls, kwargs = [f"{flag}/--no-{flag[2:]}"], {"default": None}
        elif get_origin(annotation) is Literal:
            decls, kwargs = [flag], {"type": click.Choice(get_args(annotation))}
        elif get_origin(annotation) is list:  # repeatable
            decls, kwargs = [flag], {"multiple": True}
        else:
            kind = next((t for t in (get_args(annotation) or (annotation,)) if t is not type(None)), str)
            decls, kwargs = [flag], {"type": _CLICK_TYPES.get(kind, str)}
        command = click.option(*decls, name, help=help_text, **kwargs)(command)
    return command


_CLICK_TYPES: dict[Any, Any] = {int: int, float: float, Path: click.Path(path_type=Path)}  # a file or a directory


@click.command()
@settings_options
def serve(**flags: Any) -> None:
    """Serve a model: EAS-compatible POST /, POST /v1/intents, /metrics, /health/*, /ui.

    Every flag has an INTENTLM_<NAME> environment variable; flags win.
    """
    from pydantic import ValidationError

    from service.config import ModelNotFoundError, Settings

    try:
        settings = Settings(**{name: value for name, value in flags.items() if value not in (None, ())})
        model_dirs = settings.resolve_models()
    except ValidationError as exc:
        error = exc.errors()[0]
        raise click.UsageError(f"{'.'.join(map(str, error['loc']))}: {error['msg']}") from exc
    except ModelNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    from service.hardware import choose_dtype
    from service.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)

    summary = {**settings.summary(), "model": {name: str(d) for name, d in model_dirs.items()}}
    click.echo(f"intentlm serve settings: {json.dumps(summary, default=str)}", err=True)
    click.echo(f"intentlm serve: {choose_dtype(settings.dtype)}", err=True)
    sys.exit(run_server(settings, model_dirs))


def run_server(settings: Any, model_dirs: dict[str, Path]) -> int:
    """Run until SIGINT/SIGTERM; returns the exit status (1 when the engine failed to load or died)."""
    import uvicorn

    from service.app import create_app

    app = create_app(settings, model_dirs)

    class DrainingServer(uvicorn.Server):
        """On SIGTERM, report not-ready at once, then let uvicorn finish in-flight requests."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.draining = True
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # uvicorn's loggers propagate to the handler of service.logs.configure_logging
        access_log=False,  # /metrics counts every request; a log line each costs CPU we need
        timeout_graceful_shutdown=int(settings.request_timeout) + 5,
    )
    server = DrainingServer(config)
    app.state.on_fatal = lambda: setattr(server, "should_exit", True)
    # Bound before the engine loads: a port in use fails at once, and none of the ports vLLM's processes open for
    # their own messages while it loads can be the one this server was told to listen on.
    server.run(sockets=[config.bind_socket()])
    return 1 if app.state.load_error is not None or app.state.engine_error is not None else 0
