"""The HTTP API's request and response bodies (DESIGN §5), as pydantic models.

Bounds on strings, history and batch size are part of the contract: a request that breaks one is
refused with 422 naming the field before any work is done. The request body limit (413) bounds
everything else. Unknown fields are ignored so that EAS clients sending extra keys keep working.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from service.modelcard import MODEL_NAME

MAX_TEXT_CHARS = 16_000
MAX_HISTORY_TURNS = 64
MAX_BATCH = 64

Text = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)]
Utterance = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS)]
Turn = tuple[Text, Text]
ModelName = Annotated[
    str | None,
    Field(
        None,
        max_length=64,
        description="The served model that answers (GET /v1/models lists them); default: the server's first.",
    ),
]
History = Annotated[list[Turn], Field(max_length=MAX_HISTORY_TURNS)]


class EasRequest(BaseModel):
    """``POST /``: the EAS body, field for field."""

    model_config = ConfigDict(extra="ignore")

    prompt: Utterance
    system_prompt: Text | None = Field(None, description="Default: the model card's system prompt.")
    history: History = Field(default_factory=list, description="Previous [user, assistant] turns.")
    top_k: int = Field(
        1,
        description="-1 (all tokens) or at least 1.",
        json_schema_extra={"anyOf": [{"const": -1}, {"minimum": 1}]},  # what the validator below enforces
    )
    top_p: float = Field(0.8, gt=0, le=1)
    temperature: float = Field(0.0, ge=0, le=2, description="0 decodes greedily.")
    max_new_tokens: int = Field(64, ge=1, description="Clamped to the server's cap and the context left.")
    use_stream_chat: bool = False
    model: ModelName

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, value: int) -> int:
        if value != -1 and value < 1:
            raise ValueError("top_k must be -1 or at least 1")
        return value


class EasResponse(BaseModel):
    """The EAS reply; a stream sends one per update, each with the full text so far."""

    response: str
    history: list[list[str]]


class IntentsRequest(BaseModel):
    """``POST /v1/intents``: one ``text`` or a batch of ``texts`` (sharing history and system prompt)."""

    model_config = ConfigDict(
        extra="forbid",
        # Exactly one of text/texts, as ``utterances`` enforces: stated so that schema-driven clients know.
        json_schema_extra={
            "oneOf": [
                {"required": ["text"], "properties": {"text": {"type": "string"}}},
                {"required": ["texts"], "properties": {"texts": {"type": "array"}}},
            ]
        },
    )

    text: Utterance | None = None
    texts: Annotated[list[Utterance], Field(min_length=1, max_length=MAX_BATCH)] | None = None
    history: History = Field(default_factory=list)
    system_prompt: Text | None = None
    constrained: bool = Field(True, description="Decode within the grammar over the model's intents; false: free-form.")
    model: ModelName

    def utterances(self) -> list[str] | None:
        """The texts to label, or None when the body gives neither or both of ``text`` and ``texts``."""
        if (self.text is None) == (self.texts is None):
            return None
        return [self.text] if self.text is not None else list(self.texts or [])


class IntentCall(BaseModel):
    name: str
    args: list[str]


class RankedIntent(BaseModel):
    name: str
    confidence: float


class IntentPrediction(BaseModel):
    """One utterance's answer. ``raw`` is what the model wrote, even when the reply is out-of-scope."""

    intents: list[IntentCall]
    raw: str
    confidence: float = Field(description="Calibrated probability that the intent names are right.")
    ranking: list[RankedIntent] = Field(
        default_factory=list,
        description="The first call's most likely intents, most likely first, with calibrated probabilities that "
        "sum to at most 1 (Rasa's intent_ranking), from the decoding's own distribution over the allowed names; "
        "empty for a free-form answer.",
    )
    oos_reason: str | None = Field(
        None,
        description="The score under its threshold that turned the model's answer out of scope "
        "('confidence' or 'typicality'); null when the answer was not rejected.",
    )
    typicality: float | None = Field(
        None,
        description="Closeness of the prompt's hidden state to the training requests of its nearest intent "
        "(service.typicality), in (0, 1]; null when the model has no typicality statistics.",
    )
    latency_ms: float


class AddModelRequest(BaseModel):
    """``POST /v1/admin/models``: serve one more adapter directory of the server's base, under ``name``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=MODEL_NAME.pattern,
        description="What requests call it: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.",
    )
    path: str = Field(min_length=1, max_length=4096, description="The adapter directory, on the server's disk.")


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    """Every 4xx/5xx body."""

    error: ErrorDetail


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None  # ours: our error code; vLLM's: the status


class OpenAIErrorBody(BaseModel):
    """Every 4xx/5xx body of the OpenAI-compatible routes (OpenAI's shape)."""

    error: OpenAIErrorDetail
