"""The ``oneencoder`` command: one sub-command per job."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from jobs import embed as embed_job
    from jobs import evaluate as evaluate_job
    from jobs import serve as serve_job
    from jobs import train as train_job

    parser = argparse.ArgumentParser(prog="oneencoder", description="OneEncoder on Ray: embed media corpora into one space.")
    sub = parser.add_subparsers(dest="command", required=True)
    embed_job.build_parser(sub.add_parser("embed", help="embed a manifest into a Parquet feature store (Ray Data)"))
    train_job.build_parser(sub.add_parser("train", help="train the projection progressively on a feature store (Ray Train)"))
    serve_job.build_parser(sub.add_parser("serve", help="serve a model artifact over HTTP on Ray Serve (OpenAI-compatible)"))
    evaluate_job.build_parser(sub.add_parser("evaluate", help="retrieval, zero-shot and modality-gap report of a model artifact"))
    sample = sub.add_parser("sample-corpus", help="write a small generated paired corpus and its manifest")
    sample.add_argument("dest", help="folder to write")
    sample.add_argument("--n", type=int, default=24, help="number of samples (default 24)")
    sub.add_parser("config-reference", help="print every config field with its default and meaning")
    args = parser.parse_args(argv)
    if args.command == "embed":
        return embed_job.run(args)
    if args.command == "evaluate":
        return evaluate_job.run(args)
    if args.command == "train":
        return train_job.run(args)
    if args.command == "serve":
        return serve_job.run(args)
    if args.command == "sample-corpus":
        from pipeline.corpus import write_sample_corpus

        if args.n < 1:
            parser.error(f"--n must be at least 1, got {args.n}")
        print(write_sample_corpus(args.dest, n=args.n))
        return 0
    from pipeline.config import config_reference

    print("\n".join(config_reference()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
