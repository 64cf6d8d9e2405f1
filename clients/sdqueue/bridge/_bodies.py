"""JSON bodies that routes read themselves: their OpenAPI entry and their parsing, with the contract's error.

A route that declares a pydantic body makes FastAPI decode the JSON and validate the result in two passes, after
solving the route's dependencies; reading the body here is one pass through pydantic's JSON parser.
`POST /v1/txt2img` does this because it is the bridge's hot path; the compatibility routes because their errors
must be ours.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from sdqueue.bridge._errors import BridgeError, describe_problems
from sdqueue.contracts import ErrorCode

Body = TypeVar("Body", bound=BaseModel)


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI `requestBody` entry of a route that reads `model` with `read_json`."""
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def read_json(request: Request, model: type[Body]) -> Body:
    """The request's body as `model`.

    Raises:
        BridgeError: `invalid_request`, naming what is wrong (the body is not JSON, a field is invalid).
    """
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise BridgeError(ErrorCode.INVALID_REQUEST, describe_problems(exc.errors())) from exc
