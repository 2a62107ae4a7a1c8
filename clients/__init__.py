"""The Python client for an intentlm (or EAS-compatible) service. Depends on httpx and pydantic only."""
