"""The request bodies of the HTTP API as pydantic models: what the handlers read, and what /openapi.json describes.

A body is parsed by ``serving.inputs.parse_json_body`` first (size, depth and value-count guards), then validated
here. Types and fixed ranges live in the models; what depends on the server (the served modalities, the model's
widths, ``limits.max_k``, the index's metadata columns) is checked by the handlers, which name the same fields.
Fields the API does not know are ignored, as OpenAI's API does (its clients send ``user``).
"""
from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.inputs import APIError

ENCODING_FORMATS = ("float", "base64", "int8", "binary")  # pipeline.index.compact
MAX_ID_PREFIX = 256  # characters of /v1/search's id_prefix
Scalar = str | int | float | bool
_INPUT = ("A string or a list of strings: plain text, a `data:<mime>;base64,...` URI (image, audio, video, depth) "
          "or, with a media `modality` and remote fetching enabled, an allow-listed http(s) URL.")


class _Request(BaseModel):
    # strict: "10" is not 10 and true is not 1; a float field still takes an integer
    model_config = ConfigDict(strict=True, extra="ignore")


class EmbeddingsRequest(_Request):
    """POST /v1/embeddings (OpenAI's embeddings request, plus `modality`)."""

    model: str = Field(description="The served model id (see GET /v1/models).")
    input: str | list[str] = Field(description=_INPUT)
    modality: str | None = Field(None, description="Force every input to this modality (one the server serves); "
                                 "`text` takes every string as written, even one starting with `data:`.")
    encoding_format: Literal[ENCODING_FORMATS] | None = Field(  # type: ignore[valid-type]
        None, description="`float` (default), `base64` (little-endian float32), `int8` (scaled to ±127) or `binary` "
                          "(sign bits, 8 to a byte, most significant first).")
    dimensions: int | None = Field(None, ge=1, description="Return the first N components, renormalised: the model's "
                                   "width or a width it was trained for (GET /v1/models lists them as `widths`).")
    user: str | None = Field(None, description="OpenAI's end-user id: accepted and ignored.")


class SearchRequest(_Request):
    """POST /v1/search."""

    model: str | None = Field(None, description="The served model id; optional.")
    query: str | list[str] = Field(description="One input, as in /v1/embeddings (a list must hold exactly one).")
    modality: str | None = Field(None, description="Force the query's modality (one the server serves).")
    target_modality: str | list[str] | None = Field(None, description="The indexed modality or modalities to search; "
                                                    "null = every indexed one (ranked together by `match`).")
    k: int = Field(10, ge=1, description="How many hits (at most the server's limits.max_k).")
    id_prefix: str | None = Field(None, min_length=1, max_length=MAX_ID_PREFIX,
                                  description="Keep only items whose id starts with this.")
    where: dict[str, Scalar | list[Scalar]] | None = Field(
        None, description="Keep only items whose metadata column holds the value (or one of the values), for every "
                          "column named: columns of an index built with `oneencoder index --metadata`.")
    exact: bool = Field(False, description="Scan every vector instead of asking the graphs.")
    min_match: float | None = Field(None, ge=0, le=1, description="Drop hits whose `match` (the calibrated "
                                    "probability that a hit is the query's partner) is below this.")
    hubness: bool = Field(False, description="Apply the hubness correction to the scores.")
    dimensions: int | None = Field(None, description="The width searched: must be the index's width.")


# the error code of a bad value, per field (as the handlers' own checks of the same fields answer)
CODES = {"model": "invalid_model", "input": "invalid_input", "query": "invalid_input", "modality": "unsupported_modality",
         "target_modality": "unsupported_modality", "encoding_format": "invalid_encoding_format",
         "dimensions": "unsupported_dimensions", "k": "invalid_k", "id_prefix": "invalid_id_prefix",
         "where": "invalid_where", "exact": "invalid_exact", "min_match": "invalid_min_match",
         "hubness": "invalid_hubness", "user": "invalid_user"}
R = TypeVar("R", bound=_Request)


def typed(model: type[R], body: dict[str, Any]) -> R:
    """``body`` as ``model``; a 400 naming the first bad field, the value given and what was expected."""
    try:
        return model.model_validate(body)
    except ValidationError as e:
        error = e.errors(include_url=False)[0]
        field = str(error["loc"][0])
        if error["type"] == "missing":
            raise APIError(400, f"missing required field {field!r}: {model.model_fields[field].description}",
                           "missing_field", field) from None
        given = repr(body.get(field))
        given = given if len(given) <= 80 else given[:77] + "..."
        raise APIError(400, f"{field}={given}: {error['msg']} ({field}: {model.model_fields[field].description})",
                       CODES.get(field, "invalid_request"), field) from None



def openapi_body(model: type[_Request]) -> dict[str, Any]:
    """A route's ``openapi_extra``: its JSON body is ``model`` (the handler reads the raw body itself, behind the
    size and depth guard, so FastAPI does not parse it)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def with_request_schemas(spec: dict[str, Any]) -> dict[str, Any]:
    """FastAPI's OpenAPI document with the request models (and what they refer to) under components.schemas."""
    from pydantic.json_schema import models_json_schema

    _, defs = models_json_schema([(m, "validation") for m in (EmbeddingsRequest, SearchRequest)],
                                 ref_template="#/components/schemas/{model}")
    spec.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
    return spec
