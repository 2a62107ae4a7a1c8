"""intentlm: labelled utterances in, a low-latency LLM intent service out.

The Python client is importable from here, where a user looks for it::

    from intentlm import IntentClient

    with IntentClient("http://127.0.0.1:8000") as client:
        print(client.predict("turn the lights off").intents)

It is the ``clients`` package (httpx and pydantic only), so importing ``intentlm`` stays light:
``intentlm --help`` loads neither torch, vLLM nor FastAPI. The ``intentlm`` command is ``intentlm.cli``.
"""

import clients
from clients import *  # noqa: F403  (the client's public names, listed once, in clients.__all__)

__all__ = clients.__all__
