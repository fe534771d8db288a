"""Evaluation of a model artifact on a feature store: retrieval, zero-shot, modality gap, plots."""
from __future__ import annotations

import itertools
import json
import logging
import os
from typing import Any

import numpy as np
import yaml
from pydantic import Field

from pipeline.artifact import read_artifact
from pipeline.config import ConfigError, StorageConfig, StrictModel
from pipeline.eval.examples import MediaSource, pick, render, text_ids
from pipeline.eval.metrics import both_directions, retrieval
from pipeline.eval.probe import classification
from pipeline.eval.search import format_search, search_quality
from pipeline.index.compact import PRECISIONS, recall_at_widths
from pipeline.inference import load_model
from pipeline.store.files import write_json
from pipeline.store.features import embeddings, read_features
from pipeline.store.pairs import load_features

log = logging.getLogger(__name__)


class EvaluateConfig(StrictModel):
    model: str | None = Field(None, description="Model artifact folder (from the train job).")
    features: str | None = Field(None, description="Feature store folder (local or s3://).")
    labels: str | None = Field(None, description="YAML/JSON with labels (id -> class) and templates, for zero-shot classification (labels.yaml from `oneencoder dataset`); a store of one modality is enough.")
    groups: str | None = Field(None, description="groups.json from `oneencoder dataset`: the rows that show one item (an image and its captions); retrieval then counts any of an item's partners as a hit, as the standard protocols and clip_benchmark do (multi-positive), instead of the row's own partner only.")
    benchmark: str | None = Field(None, description="Dataset name written in clip_benchmark.json (e.g. mscoco_captions); null = the store's folder name.")
    probe_features: str | None = Field(None, description="Feature store of a training split for a linear probe (logistic regression on the model's aligned vectors, measured on `features` with `labels`); needs probe_labels.")
    probe_labels: str | None = Field(None, description="labels.yaml of the probe_features store.")
    output: str | None = Field(None, description="Report folder; null = MODEL/eval.")
    baseline: bool = Field(False, description="Also train a jointly trained baseline per stage pair (two 2-layer MLPs, InfoNCE) on the model's training ids and compare on its held-out ids: what freezing costs.")
    baseline_epochs: int = Field(100, ge=1, description="Epochs of each baseline pair.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="S3 access to the feature store.")


def evaluate(model_dir: str, features_uri: str, labels_path: str | None = None, output: str | None = None,
             storage: dict[str, Any] | None = None, baseline_epochs: int | None = None,
             groups_path: str | None = None, benchmark: str | None = None, probe_features: str | None = None,
             probe_labels: str | None = None) -> dict[str, Any]:
    """Evaluate every modality pair present in both the model and the store; write report.json, clip_benchmark.json
    and PNGs (the training curves, recall bars, and the retrieval-examples sheets: ``pipeline.eval.examples``).

    With ``groups_path``, retrieval is multi-positive (``grouped_retrieval``); with ``labels_path``, zero-shot
    classification (a store of one modality is enough then); with ``baseline_epochs``, also
    ``baseline_comparison``; with ``probe_features`` and ``probe_labels``, a linear probe. Returns the report.
    ``output`` defaults to MODEL_DIR/eval.
    """
    if bool(probe_features) != bool(probe_labels) or (probe_features and not labels_path):
        raise ConfigError("a linear probe needs probe_features (a training split's store), probe_labels (its labels) "
                          f"and labels (the evaluated store's); got probe_features={probe_features!r}, "
                          f"probe_labels={probe_labels!r}, labels={labels_path!r}")
    model = load_model(model_dir)
    output = output or os.path.join(model_dir, "eval")
    os.makedirs(output, exist_ok=True)
    groups = read_groups(groups_path) if groups_path else None
    projected: dict[str, tuple[list[str], np.ndarray]] = {}
    for name in model.modalities:
        table = read_features(features_uri, name, storage or {})
        if table.num_rows == 0:
            log.info("feature store has no %s features; %s is not evaluated", name, name)
            continue
        row_ids = table.column("id").to_pylist()
        feats = dict(zip(row_ids, embeddings(table)))  # stored dtype: project converts a chunk at a time
        ids = distinct_items(dict(zip(row_ids, table.column("uri").to_pylist())), groups) if groups else sorted(feats)
        if ids:
            projected[name] = (ids, model.project(np.stack([feats[i] for i in ids]), name))
    if len(projected) < (1 if labels_path else 2):
        raise ConfigError(f"need features of {'one modality' if labels_path else 'two modalities'} of the model "
                          f"({', '.join(model.modalities)}) in {features_uri}"
                          + ("" if labels_path else " (or --labels, to classify the items of one)")
                          + (f" whose ids are in {groups_path}" if groups else ""))
    artifact = read_artifact(model_dir)
    report: dict[str, Any] = {"model": os.path.abspath(model_dir), "features": features_uri, "pairs": {}, "gap": {},
                              "compact": {}}
    for a, b in itertools.combinations(sorted(projected), 2):
        if groups:
            result = grouped_retrieval(projected[a], projected[b], groups, a, b)
            if result["n"] >= 2:
                report["pairs"][f"{a}-{b}"] = result
            continue
        za, zb, n = _paired(projected[a], projected[b])
        if n < 2:
            continue
        report["pairs"][f"{a}-{b}"] = {"n": n, "protocol": "paired", **both_directions(za, zb, a, b)}
        report["gap"][f"{a}-{b}"] = modality_gap(za, zb)
        widths = sorted(set(artifact.widths(a)) & set(artifact.widths(b)))
        report["compact"][f"{a}-{b}"] = recall_at_widths(za, zb, widths)
    report["search"] = search_quality(projected) if len(projected) > 1 else {}
    if labels_path:
        report["zero_shot"] = zero_shot(model, projected, labels_path)
    if probe_features:
        report["linear_probe"] = probe(model, projected, labels_path, probe_features, probe_labels, storage or {})
    name = benchmark or os.path.basename(features_uri.rstrip("/")) or "features"
    write_json(os.path.join(output, "clip_benchmark.json"), clip_benchmark(report, name, model_dir))
    if baseline_epochs:
        report["baseline"] = baseline_comparison(model_dir, features_uri, storage or {}, baseline_epochs, set(projected))
    report["examples"] = pick(projected, artifact.held_out)
    write_json(os.path.join(output, "report.json"), report)
    media = MediaSource(model, features_uri, storage)
    texts = text_ids(report["examples"])
    report["plots"] = plot({"stages": artifact.stages}, report, output)
    report["plots"] += render(report["examples"], lambda m, item: media.get(m, item, texts), output)
    write_json(os.path.join(output, "report.json"), report)
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as a console table: recall per direction, zero-shot accuracy, where the files are."""
    lines = [f"{'pair':<14}{'n':>6}  direction            R@1    R@5    R@10   median rank"]
    if any(m.get("protocol") == "multi-positive" for m in report["pairs"].values()):
        lines.insert(0, "multi-positive retrieval (groups): n is the items both modalities show; a hit is any partner "
                        "of the query's group")
    for pair, m in report["pairs"].items():
        a, b = pair.split("-")
        if f"{a}->{b}/recall@1" not in m:
            continue
        for q, t in ((a, b), (b, a)):
            k = f"{q}->{t}/"
            lines.append(f"{pair:<14}{m['n']:>6}  {q + ' -> ' + t:<20}{m[k + 'recall@1']:.3f}  {m[k + 'recall@5']:.3f}  "
                         f"{m[k + 'recall@10']:.3f}  {m[k + 'median_rank']:.0f}")
    if report.get("baseline"):
        base = report["baseline"]
        lines += ["", f"against a jointly trained baseline (two 2-layer MLPs per pair, InfoNCE, {base['epochs']} epochs, "
                      "same training ids), instance R@1 on the model's held-out ids:",
                  f"{'pair':<16}{'n':>6}  progressive  baseline  only prog./base.  p(progressive worse)"]
        for pair, r in base["pairs"].items():
            lines.append(f"{pair:<16}{r['val_items']:>6}  {r['progressive']:>11.3f}  {r['baseline']:>8.3f}  "
                         f"{r['only_progressive']:>7} / {r['only_baseline']:<7}  {r['p_worse']:.3f}")
    lines += format_compact(report.get("compact"))
    lines += format_search(report.get("search"))
    for what, key in (("zero-shot", "zero_shot"), ("linear probe", "linear_probe")):
        for name, z in (report.get(key) or {}).items():
            if isinstance(z, dict):
                lines.append(f"{what} {name}: accuracy {z['accuracy']:.3f} (top-5 {z['top5']:.3f}, mean per-class "
                             f"recall {z['mean_per_class_recall']:.3f}) over {z['n']} items")
    lines.append("report: " + report["plots"][0].rsplit("/", 1)[0] + "/report.json; plots: " + ", ".join(report["plots"]))
    return "\n".join(lines)


def format_compact(compact: dict[str, Any] | None) -> list[str]:
    """Console lines: R@1 / R@10 (both directions averaged) per pair at each trained width and precision."""
    if not compact:
        return []
    lines = ["", "compact vectors: R@1 / R@10 (both directions) per trained width and precision",
             f"{'pair':<14}{'width':>6}  " + "  ".join(f"{p:>13}" for p in PRECISIONS)]
    for pair, by_width in compact.items():
        for width, r in by_width.items():
            lines.append(f"{pair:<14}{width:>6}  " + "  ".join(
                f"{r[p]['recall@1']:.3f} / {r[p]['recall@10']:.3f}" for p in PRECISIONS))
    return lines


def baseline_comparison(model_dir: str, features_uri: str, storage: dict[str, Any], epochs: int,
                        available: set[str] | None = None) -> dict[str, Any]:
    """Each stage's pair (new → anchor) of the model against a jointly trained pairwise baseline on the same store,
    split and seed as the model's training: instance R@1 on held-out ids and the paired sign test. ``available``:
    the modalities the store has (pairs outside it, e.g. the stages a grown model came with, are left out)."""
    from pipeline.eval.baseline import compare

    artifact = read_artifact(model_dir)
    config = artifact.provenance["config"]
    pairs = tuple((s["new"], s["anchor"]) for s in artifact.stages
                  if available is None or {s["new"], s["anchor"]} <= available)
    result = compare(features_uri, model_dir, None, config["val_fraction"], epochs, seed=config["seed"], pairs=pairs,
                     storage=storage)
    return {"epochs": epochs, "pairs": result}


def read_groups(path: str) -> dict[str, str]:
    """groups.json (``{"groups": {id: group}}``, from `oneencoder dataset`) → id → group; ConfigError naming the file."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as e:
        raise ConfigError(f"groups={path!r}: cannot read it as JSON: {e}") from None
    groups = data.get("groups") if isinstance(data, dict) else None
    if not isinstance(groups, dict) or not groups:
        raise ConfigError(f"groups={path!r}: expected an object with 'groups' (row id -> group id), as `oneencoder "
                          "dataset` writes it")
    return {str(k): str(v) for k, v in groups.items()}


def distinct_items(uris: dict[str, str | None], groups: dict[str, str]) -> list[str]:
    """The ids of one modality that are in ``groups``, one per distinct item: rows of a group with the same media
    file show one item (an image repeated on each of its captions' rows) and count once; text rows (no URI) are
    each their own, as clip_benchmark counts every caption."""
    seen: set[tuple[str, str]] = set()
    ids = []
    for i in sorted(uris):
        if i in groups:
            uri = uris[i]
            if uri is None or (groups[i], uri) not in seen:
                seen.add((groups[i], uri or ""))
                ids.append(i)
    return ids


def grouped_retrieval(a: tuple[list[str], np.ndarray], b: tuple[list[str], np.ndarray], groups: dict[str, str],
                      name_a: str, name_b: str) -> dict[str, Any]:
    """Multi-positive retrieval both ways over the groups both modalities have: a query's hit is any item of its
    group (an image is found by any of its captions and finds any of them), R@1/5/10 and the median rank of its best
    partner, as clip_benchmark and the COCO / Flickr30k protocols count them."""
    (ids_a, za), (ids_b, zb) = a, b
    la, lb = [groups[i] for i in ids_a], [groups[i] for i in ids_b]
    common = set(la) & set(lb)
    ka, kb = [k for k, g in enumerate(la) if g in common], [k for k, g in enumerate(lb) if g in common]
    ga, gb = [la[k] for k in ka], [lb[k] for k in kb]
    out: dict[str, Any] = {"n": len(common), "protocol": "multi-positive", "items": {name_a: len(ka), name_b: len(kb)}}
    if len(common) < 2:
        return out
    out.update({f"{name_a}->{name_b}/{k}": v for k, v in retrieval(za[ka], zb[kb], labels_q=ga, labels_t=gb).items()})
    out.update({f"{name_b}->{name_a}/{k}": v for k, v in retrieval(zb[kb], za[ka], labels_q=gb, labels_t=ga).items()})
    return out


def clip_benchmark(report: dict[str, Any], dataset: str, model_dir: str) -> list[dict[str, Any]]:
    """The report's retrieval and zero-shot figures in clip_benchmark's result shape (one entry per task): retrieval
    of a pair with text as ``<modality>_retrieval_recall@k`` (text → that modality: clip_benchmark's
    ``image_retrieval``) and ``text_retrieval_recall@k``; classification as acc1, acc5, mean_per_class_recall."""
    model = os.path.basename(os.path.abspath(model_dir))
    entries = []
    for pair, m in report["pairs"].items():
        a, b = pair.split("-")
        if "text" not in (a, b) or f"{a}->{b}/recall@1" not in m:
            continue
        other = b if a == "text" else a
        metrics = {}
        for k in (1, 5, 10):
            metrics[f"{other}_retrieval_recall@{k}"] = m[f"text->{other}/recall@{k}"]
            metrics[f"text_retrieval_recall@{k}"] = m[f"{other}->text/recall@{k}"]
        entries.append({"dataset": dataset, "model": model, "pretrained": os.path.abspath(model_dir),
                        "task": "zeroshot_retrieval", "modality": other, "protocol": m["protocol"],
                        "metrics": metrics, "language": "en"})
    for task, key, prefix in (("zeroshot_classification", "zero_shot", ""), ("linear_probe", "linear_probe", "lp_")):
        for modality, z in (report.get(key) or {}).items():
            if isinstance(z, dict):
                entries.append({"dataset": dataset, "model": model, "pretrained": os.path.abspath(model_dir),
                                "task": task, "modality": modality,
                                "metrics": {f"{prefix}acc1": z["accuracy"], f"{prefix}acc5": z["top5"],
                                            f"{prefix}mean_per_class_recall": z["mean_per_class_recall"]},
                                "language": "en"})
    return entries


def _paired(a: tuple[list[str], np.ndarray], b: tuple[list[str], np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    index_b = {i: k for k, i in enumerate(b[0])}
    rows = [(k, index_b[i]) for k, i in enumerate(a[0]) if i in index_b]
    if not rows:
        return a[1][:0], b[1][:0], 0
    ia, ib = map(list, zip(*rows))
    return a[1][ia], b[1][ib], len(rows)


def modality_gap(za: np.ndarray, zb: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Centroid distance, and mean cosine of true pairs vs random pairs (unit vectors (N, d))."""
    shuffled = np.random.default_rng(seed).permutation(len(zb))
    return {"centroid_distance": float(np.linalg.norm(za.mean(0) - zb.mean(0))),
            "cosine_true_pairs": float((za * zb).sum(1).mean()),
            "cosine_random_pairs": float((za * zb[shuffled]).sum(1).mean())}


def read_labels(labels_path: str) -> tuple[dict[str, str], list[str], list[str]]:
    """A label file (YAML or JSON: ``labels`` id → class name, ``templates`` with ``{}``, optional ``classes``,
    default every label used) → (labels, classes, templates); ConfigError naming what is wrong."""
    try:
        with open(labels_path, encoding="utf-8") as fh:
            spec = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"label file {labels_path}: cannot read it: {e}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("labels"), dict) or not spec["labels"]:
        raise ConfigError(f"label file {labels_path}: expected a mapping with 'labels' (id -> class name) and 'templates'")
    templates = spec.get("templates") or ["{}"]
    if not all(isinstance(t, str) and "{}" in t for t in templates):
        raise ConfigError(f"label file {labels_path}: every template must be a string with '{{}}', got {templates!r}")
    labels = {str(k): str(v) for k, v in spec["labels"].items()}
    return labels, [str(c) for c in spec.get("classes") or sorted(set(labels.values()))], templates


def probe(model, projected: dict[str, tuple[list[str], np.ndarray]], labels_path: str, probe_features: str,
          probe_labels: str, storage: dict[str, Any]) -> dict[str, Any]:
    """A linear probe (``pipeline.eval.probe``) per modality with labelled items in both the evaluated store and the
    training store ``probe_features`` (labelled by ``probe_labels``), on the model's aligned vectors."""
    from pipeline.eval.probe import linear_probe

    test_labels, _, _ = read_labels(labels_path)
    train_labels, _, _ = read_labels(probe_labels)
    out: dict[str, Any] = {}
    for name, (ids, z) in projected.items():
        try:
            feats = load_features(probe_features, name, storage)
        except ValueError:
            continue
        train_ids = [i for i in sorted(feats) if i in train_labels]
        test_rows = [k for k, i in enumerate(ids) if i in test_labels]
        if len(set(train_labels[i] for i in train_ids)) < 2 or not test_rows:
            continue
        zt = model.project(np.stack([feats[i] for i in train_ids]), name)
        out[name] = linear_probe((zt, [train_labels[i] for i in train_ids]),
                                 (z[test_rows], [test_labels[ids[k]] for k in test_rows]))
    if not out:
        raise ConfigError(f"probe_features={probe_features!r}: no modality has labelled items both there "
                          f"({probe_labels}) and in the evaluated store ({labels_path})")
    return out


def zero_shot(model, projected: dict[str, tuple[list[str], np.ndarray]], labels_path: str) -> dict[str, Any]:
    """Classify items of every modality against text prompts of each class (``read_labels``'s file): top-1, top-5
    and mean per-class recall."""
    labels, classes, templates = read_labels(labels_path)
    prompts = model.embed([t.format(c) for c in classes for t in templates], "text")
    protos = prompts.reshape(len(classes), len(templates), -1).mean(1)
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    out = {"classes": len(classes), "templates": templates}
    index = {c: k for k, c in enumerate(classes)}  # (a dict: a list scan per item is 50M steps on ImageNet)
    for name, (ids, z) in projected.items():
        keep = [k for k, i in enumerate(ids) if labels.get(i) in index]
        if not keep:
            continue
        out[name] = {"n": len(keep), **classification(z[keep] @ protos.T, [index[labels[ids[k]]] for k in keep])}
    return out


def plot(metrics: dict[str, Any], report: dict[str, Any], output: str) -> list[str]:
    """training_curves.png (loss and val recall@1 per epoch, per stage) and recall.png (per pair)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_r1) = plt.subplots(1, 2, figsize=(11, 4))
    for stage in metrics["stages"]:
        epochs = [h["epoch"] for h in stage["history"]]
        ax_loss.plot(epochs, [h["loss"] for h in stage["history"]], marker="o", label=stage["stage"])
        ax_r1.plot(epochs, [h["val/recall@1"] for h in stage["history"]], marker="o", label=stage["stage"])
    ax_loss.set(title="training loss per epoch", xlabel="epoch", ylabel="loss")
    ax_r1.set(title="validation recall@1 (mean of both directions)", xlabel="epoch", ylabel="recall@1", ylim=(0, 1))
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_r1):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(title="stage")
        ax.grid(alpha=0.3)
    curves = os.path.join(output, "training_curves.png")
    fig.tight_layout()
    fig.savefig(curves, dpi=100)
    plt.close(fig)

    names = [k for pair in report["pairs"].values() for k in pair if k.endswith("/recall@1")]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names)), 4))
    values = [next(p[k] for p in report["pairs"].values() if k in p) for k in names]
    ax.bar(range(len(names)), values, color="tab:blue")
    ax.set_xticks(range(len(names)), [n.replace("/recall@1", "") for n in names], rotation=30, ha="right")
    ax.set(title="retrieval recall@1 per direction", ylabel="recall@1", ylim=(0, 1))
    for i, v in enumerate(values):
        ax.text(i, v + 0.02, f"{v:.2f}", ha="center")
    recall = os.path.join(output, "recall.png")
    fig.tight_layout()
    fig.savefig(recall, dpi=100)
    plt.close(fig)
    return [curves, recall]
