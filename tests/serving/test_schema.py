"""Typed request bodies: what /openapi.json describes is what the handlers read, and a bad field is a 400 naming it."""
from __future__ import annotations

import ast
import inspect
import textwrap

import pytest

from serving.app import Gateway, api
from serving.inputs import APIError
from serving.schema import EmbeddingsRequest, SearchRequest, typed, with_request_schemas

HANDLERS = {"embeddings": ("/v1/embeddings", EmbeddingsRequest), "search": ("/v1/search", SearchRequest)}


def _reads(handler: str) -> tuple[set[str], list[str]]:
    """(fields read off the typed body, other reads of the parsed JSON) in a Gateway handler's source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(getattr(Gateway.func_or_class, handler))))
    typed_fields, raw = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "body":
            typed_fields.add(node.attr)
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in ("body", "parsed"):
            raw.append(ast.unparse(node))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and isinstance(node.func.value, ast.Name) and node.func.value.id in ("body", "parsed")):
            raw.append(ast.unparse(node))
    return typed_fields, raw


@pytest.mark.parametrize("handler", HANDLERS)
def test_the_schema_names_every_field_the_handler_reads(handler):
    path, model = HANDLERS[handler]
    spec = with_request_schemas(api.openapi())
    body = spec["paths"][path]["post"]["requestBody"]
    assert body["required"] is True
    ref = body["content"]["application/json"]["schema"]["$ref"]
    assert ref == f"#/components/schemas/{model.__name__}"
    schema = spec["components"]["schemas"][model.__name__]
    fields, raw = _reads(handler)
    assert fields and fields <= set(schema["properties"]), fields - set(schema["properties"])
    assert raw == [], f"{handler} reads the JSON body around its model: {raw}"
    # the parsed body is read elsewhere only by input_list, for the input field the model also describes
    assert ("query" if handler == "search" else "input") in schema["required"]
    for name, prop in schema["properties"].items():  # a generated client gets a description for every field
        assert prop.get("description"), (model.__name__, name)
    refs = [v for v in _walk(schema) if isinstance(v, str) and v.startswith("#/")]
    for r in refs:  # every reference resolves inside the document
        assert r.split("/")[-1] in spec["components"]["schemas"], r


def _walk(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)
    else:
        yield value


BAD = [  # (model, body, code, param, words in the message)
    (EmbeddingsRequest, {"input": "a"}, "missing_field", "model", "missing required field 'model'"),
    (EmbeddingsRequest, {"model": "m", "input": "a", "dimensions": "64"}, "unsupported_dimensions", "dimensions",
     "dimensions='64': Input should be a valid integer"),
    (EmbeddingsRequest, {"model": "m", "input": "a", "dimensions": 0}, "unsupported_dimensions", "dimensions",
     "greater than or equal to 1"),
    (EmbeddingsRequest, {"model": "m", "input": "a", "encoding_format": "int4"}, "invalid_encoding_format",
     "encoding_format", "'float', 'base64', 'int8' or 'binary'"),
    (EmbeddingsRequest, {"model": 7, "input": "a"}, "invalid_model", "model", "model=7"),
    (SearchRequest, {"query": "a", "k": True}, "invalid_k", "k", "k=True: Input should be a valid integer"),
    (SearchRequest, {"query": "a", "k": "10"}, "invalid_k", "k", "k='10'"),
    (SearchRequest, {"query": "a", "min_match": 1.5}, "invalid_min_match", "min_match", "less than or equal to 1"),
    (SearchRequest, {"query": "a", "id_prefix": "c" * 257}, "invalid_id_prefix", "id_prefix", "at most 256"),
    (SearchRequest, {"query": "a", "exact": "yes"}, "invalid_exact", "exact", "valid boolean"),
    (SearchRequest, {"query": "a", "where": {"split": {"nested": 1}}}, "invalid_where", "where", "where={'split'"),
    (SearchRequest, {"query": "a", "target_modality": 5}, "unsupported_modality", "target_modality", "target_modality=5"),
]


@pytest.mark.parametrize("model,body,code,param,words", BAD, ids=[f"{b[0].__name__}-{b[3]}-{i}" for i, b in enumerate(BAD)])
def test_a_bad_field_is_a_400_naming_it(model, body, code, param, words):
    with pytest.raises(APIError) as err:
        typed(model, body)
    assert (err.value.status, err.value.code, err.value.param) == (400, code, param)
    assert words in err.value.body()["error"]["message"], err.value.body()


def test_defaults_and_what_is_ignored():
    """OpenAI's clients send fields we do not use (user): accepted; a float field takes an integer."""
    body = typed(EmbeddingsRequest, {"model": "m", "input": ["a"], "user": "u-1", "something_new": {"x": 1}})
    assert body.encoding_format is None and body.dimensions is None and body.input == ["a"]
    search = typed(SearchRequest, {"query": "a", "min_match": 1, "where": {"split": ["test", 3, True]}})
    assert (search.k, search.exact, search.hubness, search.min_match) == (10, False, False, 1.0)
    assert search.where == {"split": ["test", 3, True]}
