"""What answers /v1/search: an index folder opened memory-mapped (in the Gateway's replicas), or a feature store
projected through the model at start-up (the SearchIndex deployment)."""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from serving.config import ServeArgs

log = logging.getLogger("serving")


class Searcher:
    """An index folder from `oneencoder index` (memory-mapped segments, ANN above their size threshold), or a feature
    store projected through the model and searched exactly."""

    def __init__(self, args: ServeArgs, model: str | None = None):
        """``model``: the artifact whose space is searched (an index's own model among the served versions); default
        ``args.model``."""
        from pipeline.index.segments import Segment, VectorIndex

        self.args = args
        model_path = model or self.args.model
        if self.args.index:
            index = VectorIndex(self.args.index, self.args.storage.model_dump())
            index.check_model(model_path)
            self.segments = index.segments  # every indexed modality, whichever encoders are served
            self.calibration = index.calibration
        else:
            import pyarrow as pa

            from pipeline.inference import load_model
            from pipeline.store.features import FeatureStore, embeddings, read_features

            model = load_model(model_path)
            storage = self.args.storage.model_dump()
            store = FeatureStore(self.args.features, storage)
            self.segments = {}
            for modality in self.args.modalities or model.modalities:
                if store.run_record(modality) is None:  # a modality the embed job did not write
                    continue
                table = read_features(self.args.features, modality, storage)
                # a modality with no rows stays indexed, empty: searching it finds nothing (the Gateway lists it)
                vectors = (model.project(embeddings(table), modality) if table.num_rows
                           else np.zeros((0, model.dim), np.float32))
                ids = (table.select(["id", "uri"]) if table.num_rows
                       else pa.table({"id": pa.array([], pa.string()), "uri": pa.array([], pa.string())}))
                self.segments[modality] = [Segment(modality, "store", vectors, ids.combine_chunks())]
            if not any(len(seg) for segs in self.segments.values() for seg in segs):
                raise ValueError(f"feature store {self.args.features} has no features for any modality of the model "
                                 f"({', '.join(model.modalities)})")
            self.calibration = _calibrate(model, self.segments)
        log.info("search index: %s", ", ".join(f"{m} {sum(len(s) for s in segs)}" for m, segs in self.segments.items()))

    def search(self, query: np.ndarray, query_modality: str, targets: list[str] | None, k: int, exact: bool = False,
               id_prefix: str | None = None, hubness: bool = False, min_match: float | None = None,
               where: dict[str, list[str]] | None = None) -> dict[str, Any]:
        """Top ``k`` items over the ``targets`` modalities (all when None), by cosine, or by calibrated match when
        several are searched; ``exact`` scans every vector instead of asking the graphs; ``id_prefix`` keeps ids
        that start with it; ``where`` keeps rows whose metadata columns hold one of the listed values; ``hubness``
        applies the query bank's correction; ``min_match`` drops hits less likely to be the query's partner.
        ``{"hits", "ranking"}``, or ``{"error", "param"}`` for a request the index cannot answer (no calibration for
        a pair)."""
        from pipeline.index.segments import search_segments

        targets = targets or list(self.segments)
        cal = self.calibration
        if hubness and (cal is None or query_modality not in cal.banks):
            return {"param": "hubness", "error": f"hubness: the index has no query bank of {query_modality} (an index "
                    "built before calibration existed, or no sample of that modality); search without it"}
        missing = [t for t in targets if cal is None or not cal.has(query_modality, t, hubness)]
        if min_match is not None and missing:
            return {"param": "min_match", "error": f"min_match: the index has no calibration for {query_modality} -> "
                    f"{missing[0]} (its calibration sample shares too few ids of the two modalities); search without it"}
        hits = search_segments(self.segments, query, targets, k, exact, id_prefix, query_modality=query_modality,
                               calibration=cal, hubness=hubness, where=where)
        if min_match is not None:
            hits = [h for h in hits if h.match >= min_match]
        ranking = "match" if len(targets) > 1 and not missing else "score"
        return {"ranking": ranking, "hits": [{"id": h.id, "modality": h.modality, "uri": h.uri, "score": h.score,
                                              **({"match": h.match} if h.match is not None else {}),
                                              **({"metadata": h.metadata} if h.metadata is not None else {})}
                                             for h in hits]}


    def uri_of(self, modality: str, item_id: str) -> str | None:
        """The URI the index keeps for ``item_id`` of ``modality`` (None: no such indexed item). A scan of the ids
        column (memory-mapped): milliseconds at a million items, for the media route, not the search path."""
        import pyarrow.compute as pc

        for segment in self.segments.get(modality, []):
            at = pc.index(segment.ids.column("id"), item_id).as_py()
            if at >= 0:
                return segment.ids.column("uri")[at].as_py()
        return None


def _calibrate(model: Any, segments: dict[str, list[Any]]) -> Any:
    """The calibration of a store projected at start-up, fitted as the index job fits it (the model's held-out ids)."""
    from pipeline.index.calibration import fit_held_out

    projected = {m: (segs[0].ids.column("id").to_pylist(), np.asarray(segs[0].vectors)) for m, segs in segments.items()}
    return fit_held_out(projected, *model.held_out)
