"""The HTTP application: a FastAPI ingress composing the encoder and search deployments.

(No ``from __future__ import annotations`` here: FastAPI must see real ``Request`` annotations.)

``build_app(args)`` is the Serve entry point (``import_path: serving.app:build_app``).
"""
import asyncio
import base64
import hmac
import logging
import os
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from pipeline.config import ConfigError
from pipeline.modality import Modality
from serving.budget import explain_share, request_budget
from serving.config import DECODER, GATEWAY, SEARCH, ServeArgs, encoder_deployment, parse_args
from serving.deployments import MediaDecoder, ModalityEncoder, SearchIndex
from serving.inputs import APIError, Item, fetch, input_list, parse_json_body, resolve
from serving.metrics import RequestMetrics, exposition, route_of, server_metrics
from serving.schema import (MAX_ID_PREFIX, EmbeddingsRequest, SearchRequest, openapi_body, typed,
                            with_request_schemas)
from serving.search import Searcher

log = logging.getLogger("serving")
INLINE_JSON_BYTES = 4096  # bodies up to this size are parsed on the event loop (the scan's steps are bounded by
                          # max_values, so at most ~0.3 ms); larger ones in a worker thread
# FastAPI's own /docs and /openapi.json would answer without auth: the Gateway serves them behind it
api = FastAPI(title="OneEncoder", description="Multimodal embeddings in one shared space (OpenAI-compatible).",
              docs_url=None, redoc_url=None, openapi_url=None)
api.add_middleware(RequestMetrics)


@api.exception_handler(APIError)
async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    server_metrics().inc("oneencoder_errors", route=route_of(request.url.path), status=exc.status, code=exc.code,
                         stage=exc.stage)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:  # a bug, never bad input
    log.exception("unhandled error on %s", request.url.path)
    server_metrics().inc("oneencoder_errors", route=route_of(request.url.path), status=500, code="internal_error",
                         stage="internal")
    return JSONResponse(APIError(500, f"internal error ({type(exc).__name__})", "internal_error", kind="server_error").body(),
                        status_code=500)


async def _resolve(response: Any) -> Any:
    return await response


def _overloaded(what: str, deployment: str) -> APIError:
    server_metrics().inc("oneencoder_rejected", deployment=deployment)
    return APIError(503, f"the {what} is overloaded (its queue is full); retry shortly", "server_overloaded",
                    kind="server_error", headers={"Retry-After": "1"}, stage="queue")


def _where(where: Any, columns: list[str]) -> dict[str, list[str]] | None:
    """/v1/search's ``where`` ({column: value or [values]}, every column must match) as the index compares it
    (text); APIError 400 naming what is wrong. (Above Gateway, as every helper it calls: Serve pickles the class
    as it is declared.)"""
    from pipeline.index.metadata import MAX_VALUES, as_text

    if where is None:
        return None
    if not columns:
        raise APIError(400, "where: this index keeps no metadata columns (build it with `oneencoder index "
                            "--metadata COLUMN,...` to filter by manifest columns)", "invalid_where", "where")
    if not isinstance(where, dict) or not where:
        raise APIError(400, f"where: expected an object of column: value (or a list of values), e.g. "
                            f"{{\"{columns[0]}\": \"...\"}}, got {type(where).__name__}", "invalid_where", "where")
    out = {}
    for column, value in where.items():
        if column not in columns:
            raise APIError(400, f"where: {str(column)[:64]!r} is not a metadata column of this index (it keeps "
                                f"{', '.join(columns)})", "invalid_where", "where")
        values = value if isinstance(value, list) else [value]
        if not values or len(values) > MAX_VALUES or not all(
                isinstance(v, (str, int, float, bool)) and len(str(v)) <= MAX_ID_PREFIX for v in values):
            raise APIError(400, f"where.{column}: expected a string, number or boolean (at most {MAX_ID_PREFIX} "
                                f"characters), or a list of 1 to {MAX_VALUES} of them", "invalid_where", "where")
        out[column] = [as_text(v) for v in values]
    return out


MAX_MEDIA_ID = 1024  # characters of /v1/media's id
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
# the search page's own files only: no inline script, no other origin; media as blob: URLs made from /v1/media
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
               "media-src 'self' blob:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


def _static(name: str, media_type: str) -> Response:
    """One of the search page's files (serving/static/), with the page's content security policy."""
    with open(os.path.join(STATIC, name), "rb") as fh:
        return Response(fh.read(), media_type=media_type, headers={
            "Content-Security-Policy": PAGE_POLICY, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})


def _media(uri: str | None, modality: str, item_id: str, args: ServeArgs) -> Response:
    """The stored media file of an indexed item: read from where the index says it is (a local path or S3), at most
    limits.max_file_bytes, typed by its extension when the modality accepts that type (else a download). A URL is not
    fetched (the server never fetches what it was not asked to), an inline modality has no file."""
    import mimetypes

    from pipeline.store.errors import ReadError
    from pipeline.store.sources import read_limited

    spec = Modality(modality).spec
    if spec.inline:
        raise APIError(404, f"{modality} items have no media file (their value is inline)", "media_not_stored", "id")
    if uri is None:
        raise APIError(404, f"no indexed {modality} item has the id {item_id[:80]!r}", "media_not_found", "id")
    if uri[:8].lower().startswith(("http://", "https://")):
        raise APIError(404, f"{modality} item {item_id[:80]!r} was indexed from a URL: this server does not fetch it",
                       "media_not_stored", "id")
    try:
        data = read_limited(uri, args.storage.model_dump(), args.limits.max_file_bytes)
    except ReadError as e:
        log.warning("media of %s %s: %s", modality, item_id[:80], e)
        raise APIError(404, f"the media of {modality} item {item_id[:80]!r} cannot be read", "media_unreadable",
                       "id") from None
    mime = mimetypes.guess_type(uri.split("?")[0])[0] or ""
    inline = bool(mime) and spec.accepts_mime(mime)
    return Response(data, media_type=mime if inline else "application/octet-stream", headers={
        "X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600",
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Content-Disposition": "inline" if inline else "attachment"})


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=128, max_queued_requests=256,
                  autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 32})
@serve.ingress(api)
class Gateway:
    def __init__(self, args: dict[str, Any], info: dict[str, Any], encoders: dict[str, DeploymentHandle],
                 search: DeploymentHandle | None, decoder: DeploymentHandle | None = None):
        self.args = ServeArgs(**args)
        self.info, self.encoders, self.search_handle, self.decoder = info, encoders, search, decoder
        self.modalities = list(encoders)
        # an index folder is searched here, memory-mapped (the OS shares its pages between replicas): no hop to
        # another replica per query; a feature store projected at start-up lives in the SearchIndex deployment
        self.searcher = Searcher(self.args, info["paths"][info["search_version"]]) if self.args.index else None
        token = os.environ.get(self.args.api_key_env, "") if self.args.api_key_env else ""
        if self.args.api_key_env and not token:
            raise RuntimeError(f"api_key_env={self.args.api_key_env!r} is not set in the replica's environment")
        self.token = token.encode()

    # --- plumbing -------------------------------------------------------------------------
    def _authorize(self, request: Request) -> None:
        if not self.token:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token):
            raise APIError(401, "missing or invalid API key: send 'Authorization: Bearer <token>'", "invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"}, stage="auth")

    async def _json(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        limit = self.args.limits.max_request_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise APIError(413, f"request body of {declared} bytes is over the limit of {limit} bytes", "request_too_large",
                           stage="parse")
        body, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise APIError(413, f"request body is over the limit of {limit} bytes", "request_too_large", stage="parse")
            body.append(chunk)
        data, max_values = b"".join(body), 2 * self.args.limits.max_items + 64
        try:
            if len(data) <= INLINE_JSON_BYTES:  # a few fields and a short text: microseconds, not worth a thread hop
                return parse_json_body(data, max_values)
            # parsing a body of up to max_request_bytes is CPU work: off the event loop, which serves every request
            return await asyncio.to_thread(parse_json_body, data, max_values)
        except APIError as e:
            e.stage = "parse"
            raise

    def _version(self, model: str | None) -> dict[str, Any]:
        """The served version a request's ``model`` names (``info["versions"]``); 404 naming those served."""
        version = self.info["versions"].get(model) if isinstance(model, str) else None
        if version is None:
            served = ", ".join(map(repr, self.info["versions"]))
            raise APIError(404, f"model {model!r} does not exist: this server serves {served}", "model_not_found",
                           "model")
        return version

    def _modality_field(self, value: str | None, field: str) -> str | None:
        if value is not None and value not in self.modalities:
            raise APIError(400, f"{field} {value!r} is not served: expected one of {', '.join(self.modalities)}",
                           "unsupported_modality", field)
        return value

    async def _items(self, raw: list[str], forced: str | None) -> list[Item]:
        limits = self.args.limits
        items = [resolve(i, r, forced, self.modalities, limits) for i, r in enumerate(raw)]
        remote = [it for it in items if it.remote_url]
        if remote:
            fetched = await asyncio.gather(*(asyncio.to_thread(fetch, it, self.args.remote, limits) for it in remote))
            by_index = {it.index: it for it in fetched}
            items = [by_index.get(it.index, it) for it in items]
        return items

    async def _embed(self, items: list[Item], route: dict[str, str], model: str) -> list[dict[str, Any]]:
        """Each item through its modality's batched deployment, concurrently, within the request's budgets
        (``request_budget``), by the weights of model version ``model`` (``route``: per modality, the version its
        encoder replicas run for it); 4xx naming the first bad item, or the budget a request is over."""
        from ray.serve.exceptions import BackPressureError

        for it in items:
            if it.modality not in route:
                raise APIError(400, f"input[{it.index}]: model {model!r} has no {it.modality!r} encoder (it embeds "
                                    f"{', '.join(route)})", "unsupported_modality", f"input[{it.index}]")

        # the request's budgets, from headers (pixels) and shares (seconds) before anything is decoded; media
        # headers are read off the event loop
        media = any(isinstance(it.value, bytes) for it in items)
        shares = (await asyncio.to_thread(request_budget, items, self.args.limits) if media
                  else request_budget(items, self.args.limits))
        calls, decodes = [], []
        for it, share in zip(items, shares):
            encoder, version = self.encoders[it.modality], route[it.modality]
            if self.decoder is not None and isinstance(it.value, bytes):
                # media: decoded by the MediaDecoder, whose answer Ray hands to the encoder (it never comes here)
                decodes.append(self.decoder.decode.remote(it.value, share, it.modality, version))
                calls.append(encoder.encode.remote(decodes[-1], version))
            else:  # text: one hop, straight to its encoder
                calls.append(encoder.embed.remote(it.value, share, version))
        try:
            results = await asyncio.gather(*calls)
        except BackPressureError:  # (a chained call fails alike whether its decoder or its encoder was full)
            for call in calls + decodes:
                call.cancel()
            busy = {encoder_deployment(it.modality) for it in items} | ({DECODER} if decodes else set())
            raise _overloaded(" or ".join(sorted(busy)) if decodes else "encoder",
                              busy.pop() if len(busy) == 1 else "several") from None
        for it, result, share in zip(items, results, shares):
            if "error" in result:
                reason = explain_share(result["error"], share, items, self.args.limits)
                raise APIError(400, f"input[{it.index}]: {it.modality}: {reason}", "invalid_input",
                               f"input[{it.index}]", stage="embed")
        return results

    # --- endpoints ------------------------------------------------------------------------
    @api.post("/v1/embeddings", openapi_extra=openapi_body(EmbeddingsRequest))
    async def embeddings(self, request: Request) -> JSONResponse:
        parsed = await self._json(request)
        raw = input_list(parsed, self.args.limits)  # first: a bad item is named by its index (input[3])
        body = typed(EmbeddingsRequest, parsed)
        version = self._version(body.model)
        from pipeline.index.compact import binary, int8, prefix

        fmt = body.encoding_format or "float"
        full = version["dimensions"]
        dims = full if body.dimensions is None else body.dimensions
        if not dims <= full:
            raise APIError(400, f"dimensions={dims!r}: expected an integer from 1 to {full} (the model's width)",
                           "unsupported_dimensions", "dimensions")
        if fmt == "binary" and dims % 8:
            raise APIError(400, f"dimensions={dims}: binary vectors pack 8 bits to a byte, expected a multiple of 8",
                           "unsupported_dimensions", "dimensions")
        forced = self._modality_field(body.modality, "modality")
        items = await self._items(raw, forced)
        for it in items:  # (a modality the version lacks is refused by _embed, naming both)
            if it.modality in version["widths"] and dims not in version["widths"][it.modality]:
                raise APIError(400, f"dimensions={dims}: the model's {it.modality} vectors were trained for widths "
                                    f"{', '.join(map(str, version['widths'][it.modality]))} only (train with "
                                    "stages[].loss.matryoshka to cut them shorter)", "unsupported_dimensions",
                               "dimensions")
        results = await self._embed(items, version["route"], body.model)
        data = []
        for it, result in zip(items, results):
            vector = np.asarray(result["embedding"], dtype="<f4")
            vector = vector if dims == full else prefix(vector, dims).astype("<f4")
            embedding = (base64.b64encode(vector.tobytes()).decode() if fmt == "base64" else
                         int8(vector).tolist() if fmt == "int8" else binary(vector).tolist() if fmt == "binary"
                         else vector.tolist())
            data.append({"object": "embedding", "index": it.index, "embedding": embedding, "modality": it.modality})
        tokens = sum(r["input_tokens"] for r in results)
        return JSONResponse({"object": "list", "data": data, "model": body.model,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    @api.post("/v1/search", openapi_extra=openapi_body(SearchRequest))
    async def search(self, request: Request) -> JSONResponse:
        from ray.serve.exceptions import BackPressureError

        parsed = await self._json(request)
        raw = input_list(parsed, self.args.limits, field="query")
        body = typed(SearchRequest, parsed)
        asked = None if body.model is None else self._version(body.model)
        if self.search_handle is None and self.searcher is None:
            raise APIError(404, "search is not enabled: start the server with `index` (a folder from `oneencoder index`) "
                                "or `features` (a feature store)",
                           "search_disabled")
        if len(raw) != 1:
            raise APIError(400, f"'query' takes one input, got {len(raw)}", "invalid_input", "query")
        if body.k > self.args.limits.max_k:
            raise APIError(400, f"k={body.k!r}: expected an integer from 1 to {self.args.limits.max_k}", "invalid_k", "k")
        targets = body.target_modality
        targets = None if targets is None else list(dict.fromkeys([targets] if isinstance(targets, str) else targets))
        indexed = self.info["index"]  # (a modality named twice is searched once)
        if targets is not None and (not targets or any(t not in indexed for t in targets)):
            raise APIError(400, f"target_modality {body.target_modality!r}: expected one or more of "
                                f"{', '.join(indexed)} (the indexed modalities)", "unsupported_modality", "target_modality")
        width = self.info["search_width"]
        if body.dimensions is not None and body.dimensions != width:
            raise APIError(400, f"dimensions={body.dimensions!r}: this server searches {width}-dimensional vectors (the "
                                "index's width: build one with `oneencoder index --width N` to search at another)",
                           "unsupported_dimensions", "dimensions")
        where = _where(body.where, self.info.get("search_metadata", []))
        items = await self._items(raw, self._modality_field(body.modality, "modality"))
        searched = self.info["search_version"]  # the index's space: queries are embedded by its model
        route, modality = self.info["versions"][searched]["route"], items[0].modality
        if asked is not None and modality in route and asked["route"].get(modality) != route[modality]:
            raise APIError(400, f"model {body.model!r}: the index holds vectors of {searched!r}, and {body.model!r} "
                                f"embeds {modality} differently (search with model {searched!r}, or build an index "
                                f"for {body.model!r})", "model_mismatch", "model")
        query = (await self._embed(items, route, searched))[0]
        asked = (np.asarray(query["embedding"]), items[0].modality, targets, body.k, body.exact, body.id_prefix,
                 body.hubness, body.min_match, where)
        started = time.perf_counter()
        if self.searcher is not None:  # off the event loop: an exact scan of a large index takes a while
            found = await asyncio.to_thread(self.searcher.search, *asked)
        else:
            try:
                found = await self.search_handle.search.remote(*asked)
            except BackPressureError:
                raise _overloaded("search index", SEARCH) from None
        server_metrics().observe("oneencoder_search_seconds", time.perf_counter() - started)
        if "error" in found:
            raise APIError(400, found["error"], f"uncalibrated_{found['param']}", found["param"], stage="search")
        return JSONResponse({"object": "list", "data": found["hits"], "model": body.model or searched,
                             "query_modality": items[0].modality, "ranking": found["ranking"]})

    @api.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        """Every served version (the default first): its modalities, width and trained widths, lineage (``from``: the
        version or artifact it was grown from) and, per modality, the versions whose vectors are bit-identical."""
        self._authorize(request)
        searched = self.info["search_version"]
        return JSONResponse({"object": "list", "data": [{
            "id": v, "object": "model", "created": version["created"], "owned_by": "oneencoder",
            "default": v == self.args.model_name, "modalities": version["modalities"],
            "dimensions": version["dimensions"], "widths": version["widths"], "from": version["from"],
            "same_vectors_as": version["same_vectors_as"],
            # what /v1/search finds, and whether this version's queries are in its space
            "search_index": self.info["index"], "search_metadata": self.info.get("search_metadata", []),
            "searchable": bool(self.info["index"]) and any(
                version["route"].get(m) == r for m, r in self.info["versions"][searched]["route"].items())}
            for v, version in self.info["versions"].items()]})

    @api.get("/", include_in_schema=False)
    async def page(self) -> Response:
        """The search page (serving/static/): a query, or a dropped file, and the nearest items per modality."""
        if self.search_handle is None and self.searcher is None:
            raise APIError(404, "search is not enabled: start the server with `index` or `features` for the search "
                                "page (the API is under /v1/)", "search_disabled")
        return _static("search.html", "text/html; charset=utf-8")

    @api.get("/search.js", include_in_schema=False)
    async def page_script(self) -> Response:
        return _static("search.js", "text/javascript; charset=utf-8")

    @api.get("/search.css", include_in_schema=False)
    async def page_style(self) -> Response:
        return _static("search.css", "text/css; charset=utf-8")

    @api.get("/v1/media")
    async def media(self, request: Request, modality: str, id: str) -> Response:  # noqa: A002 (the API's name)
        """The media file of an indexed item, by its modality and id (what the search page shows): only items the
        index holds, from where the index says they are, behind the API's token."""
        self._authorize(request)
        if self.search_handle is None and self.searcher is None:
            raise APIError(404, "search is not enabled: no indexed items to serve", "search_disabled")
        if modality not in self.info["index"]:
            raise APIError(400, f"modality {modality[:40]!r} is not indexed: expected one of "
                                f"{', '.join(self.info['index'])}", "unsupported_modality", "modality")
        if not 0 < len(id) <= MAX_MEDIA_ID:
            raise APIError(400, f"id: expected 1 to {MAX_MEDIA_ID} characters, got {len(id)}", "invalid_id", "id")
        if self.searcher is not None:
            uri = await asyncio.to_thread(self.searcher.uri_of, modality, id)
        else:
            uri = await self.search_handle.uri_of.remote(modality, id)
        return await asyncio.to_thread(_media, uri, modality, id, self.args)

    @api.get("/metrics", include_in_schema=False)
    async def metrics(self, request: Request) -> PlainTextResponse:
        """Prometheus text: the ``ray_oneencoder_*`` and ``ray_serve_*`` families of every node's Ray metrics agent
        (serving.metrics), behind the API's token like every route but /health."""
        self._authorize(request)
        text, failed = await exposition()
        notes = "".join(f"# oneencoder: the metrics agent at {a} did not answer\n" for a in failed)
        return PlainTextResponse(notes + text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request) -> JSONResponse:
        self._authorize(request)
        return JSONResponse(with_request_schemas(api.openapi()))

    @api.get("/docs", include_in_schema=False)
    async def docs(self, request: Request):
        from fastapi.openapi.docs import get_swagger_ui_html

        self._authorize(request)
        return get_swagger_ui_html(openapi_url="/openapi.json", title="OneEncoder API")

    @api.get("/health")
    async def health(self) -> JSONResponse:
        """200 once every encoder embeds its warm-up item (checked again every HEALTH_TTL_S) and the SearchIndex of a
        served store answers; 503 otherwise, naming each deployment that is not ready and why. With an index folder,
        ``search_index`` says what this replica opened."""
        handles = {encoder_deployment(m): h for m, h in self.encoders.items()}
        if self.decoder is not None:
            handles[DECODER] = self.decoder
        if self.search_handle is not None:
            handles[SEARCH] = self.search_handle

        async def check(call: Any) -> str:
            try:
                answer = await asyncio.wait_for(_resolve(call), timeout=5)
            except Exception as e:  # not started, restarting or overloaded
                return f"not ready ({type(e).__name__})"
            if isinstance(answer, dict) and not answer.get("ok"):  # an encoder's warm-up item failed
                return f"not ready (cannot embed: {answer.get('reason')})"
            return "ready"

        # waited for together: a probe gets its answer within one wait, not one wait per deployment not ready
        states = await asyncio.gather(*(check(h.ready.remote()) for h in handles.values()))
        status = dict(zip(handles, states))
        ready = all(v == "ready" for v in status.values())
        body: dict[str, Any] = {"status": "ready" if ready else "not ready", "deployments": status}
        if self.searcher is not None:  # the index folder, opened by this replica
            body["search_index"] = {"served_by": GATEWAY, "vectors": {m: sum(len(s) for s in segs) for m, segs
                                                                       in self.searcher.segments.items()}}
        return JSONResponse(body, status_code=200 if ready else 503)


def _model_info(args: ServeArgs) -> dict[str, Any]:
    """What the Gateway answers from. Top level: the served modalities (``args.modalities``, else every version's),
    the default version's width and each version's artifact folder (``paths``). ``versions``: per served model id (the default,
    ``model_name``, first), its artifact's served modalities, width, widths, lineage, and ``route``: per modality,
    the version whose weights its encoder replicas run; versions whose vectors of a modality are bit-identical
    (``pipeline.artifact.same_vectors``: a model grown with ``train --from`` keeps its base's) share one, so a
    replica loads it once, and ``same_vectors_as`` tells a client its stored vectors stay valid."""
    from pipeline.artifact import read_artifact, same_vectors

    paths = {args.model_name: args.model, **{v: p for v, p in args.versions.items() if v != args.model_name}}
    artifacts = {v: read_artifact(p) for v, p in paths.items()}
    every = list(dict.fromkeys(m for a in artifacts.values() for m in a.modalities))
    modalities = every
    if args.modalities is not None:
        missing = [m for m in args.modalities if m not in every]
        if missing or not args.modalities:
            raise ConfigError(f"modalities={args.modalities!r}: expected a non-empty subset of the model's "
                              f"modalities ({', '.join(every)})")
        modalities = list(dict.fromkeys(args.modalities))
    real = {v: os.path.realpath(p) for v, p in paths.items()}
    named = {folder: v for v, folder in reversed(real.items())}  # the first id naming each folder
    versions: dict[str, dict[str, Any]] = {}
    for v, artifact in artifacts.items():
        served = [m for m in artifact.modalities if m in modalities]
        route = {}
        for m in served:  # an earlier version that embeds m identically runs it for this one too
            route[m] = next((u for u, earlier in versions.items() if earlier["route"].get(m) == u and (
                real[u] == real[v] or same_vectors(artifacts[u], artifact, m))), v)
        parent = artifact.provenance.get("from")
        versions[v] = {"modalities": served, "dimensions": int(artifact.model["d"]), "created": int(artifact.created),
                       "widths": {m: artifact.widths(m) for m in served}, "route": route,
                       "from": None if parent is None else named.get(os.path.realpath(parent), os.path.basename(parent))}
    for v, version in versions.items():
        version["same_vectors_as"] = {m: [u for u in versions if u != v and versions[u]["route"].get(m) == route]
                                      for m, route in version["route"].items()}
    return {"modalities": modalities, "dimensions": versions[args.model_name]["dimensions"], "index": [],
            "versions": versions, "paths": paths, "search_version": args.model_name}


def build_application(args: dict[str, Any] | None, overrides: dict[str, dict[str, Any]] | None = None):
    """The Serve application of a model artifact; ``overrides`` are per-deployment Serve options (local runs)."""
    parsed = parse_args(args)
    plain = parsed.model_dump(mode="json")
    info = _model_info(parsed)
    overrides = dict(overrides or {})
    searched = bool(parsed.features or parsed.index)
    media = [m for m in info["modalities"] if not Modality(m).is_inline]
    decoding = parsed.decode == "decoder" and bool(media)
    known = ([GATEWAY] + [encoder_deployment(m) for m in info["modalities"]] + ([DECODER] if decoding else [])
             + ([SEARCH] if parsed.features else []))
    unknown = sorted(set(overrides) - set(known))
    if unknown:  # (Serve's own words first, as `serve deploy` would say them)
        why = ("; SearchIndex runs only with features: an index folder is searched in the Gateway's replicas"
               if parsed.index else "" if parsed.features else " (and SearchIndex needs features)")
        if unknown[0] == DECODER:
            why = (f"; {DECODER} runs only with decode: decoder (this config decodes in the encoders)" if media else
                   f"; {DECODER} decodes media, and the served modalities are all text")
        raise ValueError(f"Deployment {unknown[0]!r} does not exist. Available: {known}: the model {parsed.model} has "
                         f"the modalities {', '.join(info['modalities'])}{why}; remove {unknown[0]!r} "
                         "from the Serve config's deployments")

    def opts(name: str) -> dict[str, Any]:
        return {"name": name, **overrides.get(name, {})}

    def runs(m: str) -> dict[str, str]:  # the versions an encoder of m holds: one per distinct set of weights
        return {v["route"][m]: info["paths"][v["route"][m]] for v in info["versions"].values() if m in v["route"]}

    encoders = {m: ModalityEncoder.options(**opts(encoder_deployment(m))).bind(plain, m, runs(m))
                for m in info["modalities"]}
    decoder = MediaDecoder.options(**opts(DECODER)).bind(plain, {m: runs(m) for m in media}) if decoding else None
    search = None
    if searched:
        info["search_metadata"] = []
        if parsed.index:
            (info["index"], info["search_width"], info["search_metadata"],
             info["search_version"]) = _index_folder_modalities(parsed, info["paths"])
        else:
            default = info["versions"][parsed.model_name]["modalities"]  # the store is projected by the default
            info["index"], info["search_width"] = _indexed_modalities(parsed, default), info["dimensions"]
            search = SearchIndex.options(**opts(SEARCH)).bind(plain)
    return Gateway.options(**opts(GATEWAY)).bind(plain, info, encoders, search, decoder)


def _indexed_modalities(args: ServeArgs, modalities: list[str]) -> list[str]:
    """The model's modalities that have features in the store; refuses a store embedded with other
    encoders (or another K) than the model was trained on, naming both."""
    from pipeline.artifact import read_artifact
    from pipeline.store.features import FeatureStore, iter_features

    store = FeatureStore(args.features, args.storage.model_dump())
    found = [m for m in modalities if store.run_record(m) is not None]
    if not found:
        raise ValueError(f"features={args.features!r} has no features for any modality of the model ({', '.join(modalities)})")
    artifact = read_artifact(args.model)
    for m in found:
        mismatch = artifact.features_mismatch(store, m)
        if mismatch:
            raise ConfigError(f"features={args.features!r}: {mismatch}; index a store embedded with the model's encoders")
    for m in found:  # a damaged or tampered shard (another schema, NaN rows) is named here, before Serve starts
        for _ in iter_features(args.features, m, args.storage.model_dump()):
            pass
    return found


def _index_folder_modalities(args: ServeArgs, paths: dict[str, str]) -> tuple[list[str], int, list[str], str]:
    """The modalities the index folder holds (searchable whichever encoders are served: a text-only server finds
    images), the width it searches, its metadata columns and the served version it was built from (the default when
    several qualify); refuses an index of none of them, naming the default."""
    from pipeline.index.segments import IndexMismatchError, check_model, read_record

    try:
        record = read_record(args.index, args.storage.model_dump())
    except IndexMismatchError as e:
        raise ConfigError(f"index={args.index!r}: {e}") from None
    found, error = None, None
    for version, path in paths.items():
        try:
            check_model(record, args.index, path)
            found = version
            break
        except IndexMismatchError as e:
            error = error or e
    if found is None:
        raise ConfigError(f"index={args.index!r}: {error}")
    if not record["modalities"]:
        raise ConfigError(f"index={args.index!r} holds no modality")
    return (list(record["modalities"]), int(record.get("width", record["dim"])), list(record.get("metadata", [])),
            found)


def build_app(args: dict[str, Any]):
    """Serve entry point: ``serve run serving.app:build_app model=DIR`` or ``import_path`` in a Serve config."""
    return build_application(args)


def wait_until_ready(url: str, timeout_s: float = 300) -> None:
    """Poll ``url``/health until it answers 200."""
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.time() > deadline:
            raise TimeoutError(f"{url}/health did not report ready within {timeout_s:.0f} s")
        time.sleep(0.5)
