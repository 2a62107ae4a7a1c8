"""The wire format of an intentlm service (DESIGN §5), as the client sees it.

These models are the client's own copy of the contract: ``clients`` imports nothing else of
intentlm, so it installs and runs beside any application with httpx and pydantic alone. Replies
ignore fields they do not know, so a newer server can add some without breaking older clients.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

History = list[tuple[str, str]]
"""Earlier turns, oldest first, as ``[user, assistant]`` pairs (the EAS ``history`` field)."""


class Intent(BaseModel):
    """One recognised intent: ``name(arg1,arg2)``."""

    model_config = ConfigDict(frozen=True)

    name: str
    args: list[str] = Field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.name}({','.join(self.args)})"


class RankedIntent(BaseModel):
    """One entry of a prediction's ranking: an intent and its calibrated probability."""

    name: str
    confidence: float


class Prediction(BaseModel):
    """The reply of ``POST /v1/intents`` for one utterance."""

    intents: list[Intent]
    raw: str
    confidence: float
    ranking: list[RankedIntent] = Field(default_factory=list)  # the likeliest intents, most likely first
    oos_reason: str | None = None  # the score that turned the answer out of scope; None: not rejected
    typicality: float | None = None  # closeness of the prompt's hidden state to training requests; None: not scored
    latency_ms: float

    def __str__(self) -> str:
        """The canonical text of the calls, as the model's grammar writes them (``a(x);b()``)."""
        return ";".join(str(intent) for intent in self.intents)


class IntentRequest(BaseModel):
    """``POST /v1/intents`` for one utterance; unset fields take the server's defaults.

    ``constrained=False`` lets the model write freely instead of within the grammar of its intents.
    """

    text: str
    history: History | None = None
    system_prompt: str | None = None
    constrained: bool | None = None
    model: str | None = None


class BatchIntentRequest(BaseModel):
    """``POST /v1/intents`` for several utterances (sharing history and system prompt), answered in order."""

    texts: list[str]
    history: History | None = None
    system_prompt: str | None = None
    constrained: bool | None = None
    model: str | None = None


class SamplingParams(BaseModel):
    """The EAS sampling fields; None leaves the server's default (greedy, 64 new tokens)."""

    top_k: int | None = None
    top_p: float | None = None
    temperature: float | None = None
    max_new_tokens: int | None = None


class ChatRequest(SamplingParams):
    """The EAS-compatible ``POST /`` body, field for field what the PAI reference client sends."""

    prompt: str
    system_prompt: str | None = None
    history: History = Field(default_factory=list)
    use_stream_chat: bool = False
    model: str | None = None  # an intentlm server's; EAS ignores unknown fields


class ChatReply(BaseModel):
    """The EAS-compatible reply: the answer, and the history with this turn appended."""

    response: str
    history: History


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    """Every 4xx/5xx body of an intentlm service: ``{"error": {"code", "message", "field"?}}``."""

    error: ErrorDetail
