"""``intentlm serve``: flags over ``INTENTLM_*`` settings, then uvicorn with a draining shutdown."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click


@click.command()
@click.option("--model", type=click.Path(path_type=Path, file_okay=False), help="Model directory (default: demo model, else base model).")
@click.option("--host", help="Interface to listen on [INTENTLM_HOST, 127.0.0.1].")
@click.option("--port", type=int, help="Port [INTENTLM_PORT, 8000].")
@click.option("--api-token", help="Require this token on the API [INTENTLM_API_TOKEN].")
@click.option("--max-model-len", type=int, help="Context length in tokens [2048].")
@click.option("--max-in-flight", type=int, help="Requests generating at once (vLLM batch) [64].")
@click.option("--max-queued", type=int, help="Requests waiting for a slot before 503 [192].")
@click.option("--request-timeout", "request_timeout_s", type=float, help="Seconds before 504 [30].")
@click.option("--max-new-tokens-cap", type=int, help="Upper bound on any request's max_new_tokens [256].")
@click.option("--intent-max-tokens", type=int, help="Answer budget of /v1/intents in tokens [64].")
@click.option("--oos-threshold", type=float,
              help="Confidence below which /v1/intents answers oos() [default: the card's calibrated one, else 0: off].")
@click.option("--familiarity-threshold", type=float,
              help="Familiarity (share of the request's words seen in training) below which /v1/intents answers "
                   "oos() [default: the card's calibrated one, else 0: off].")
@click.option("--typicality-threshold", type=float,
              help="Typicality (closeness of the prompt's hidden state to the training requests) below which "
                   "/v1/intents answers oos() [default: the card's (training's, or calibrated), else 0: off].")
@click.option("--typicality/--no-typicality", default=None,
              help="Score typicality when the model has typicality.npz (a second, transformers copy of "
                   "the model) [on].")
@click.option("--dtype", help="Weights dtype for vLLM [auto].")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="[info]")
def serve(**flags: Any) -> None:
    """Serve a model: EAS-compatible POST /, POST /v1/intents, /metrics, /health/*, /ui.

    Every flag has an INTENTLM_<NAME> environment variable; flags win.
    """
    from pydantic import ValidationError

    from service.config import ModelNotFoundError, Settings

    try:
        settings = Settings(**{name: value for name, value in flags.items() if value is not None})
        model_dir = settings.resolve_model()
    except ValidationError as exc:
        error = exc.errors()[0]
        raise click.UsageError(f"{'.'.join(map(str, error['loc']))}: {error['msg']}") from exc
    except ModelNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.cpu_kvcache_gib))
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", str(settings.cpu_reserved_cores))
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    summary = {**settings.summary(), "model": str(model_dir)}
    click.echo(f"intentlm serve settings: {json.dumps(summary, default=str)}", err=True)
    sys.exit(run_server(settings, model_dir))


def run_server(settings: Any, model_dir: Path) -> int:
    """Run until SIGINT/SIGTERM; returns the exit status (1 when the engine failed to load or died)."""
    import uvicorn

    from service.app import create_app

    app = create_app(settings, model_dir)

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
        access_log=False,  # /metrics counts every request; a log line each costs CPU we need
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
    )
    server = DrainingServer(config)
    app.state.on_fatal = lambda: setattr(server, "should_exit", True)
    server.run()
    return 1 if app.state.load_error is not None or app.state.engine_error is not None else 0
