"""The OpenAPI document states the limits the running API enforces: the settings' values,
not a copy fixed when the code was written (core/contract.py)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from core.settings import Settings

# Request bodies whose `message` is a user's message, checked like a new one.
MESSAGE_BODIES = ("ChatRequest", "EditRequest")


def document_limits(app: FastAPI, settings: Settings) -> None:
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.get("components", {}).get("schemas", {})
        for name in MESSAGE_BODIES:
            field = components.get(name, {}).get("properties", {}).get("message")
            if field is not None:
                field["maxLength"] = settings.max_message_chars
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
