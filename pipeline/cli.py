"""The ``oneencoder`` command: one sub-command per job."""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    """The `oneencoder` command line: one sub-command per job (each job's own flags)."""
    from jobs import embed as embed_job
    from jobs import evaluate as evaluate_job
    from jobs import serve as serve_job
    from jobs import train as train_job

    parser = argparse.ArgumentParser(prog="oneencoder", description="OneEncoder on Ray: embed media corpora into one space.")
    sub = parser.add_subparsers(dest="command", required=True)
    embed_job.build_parser(sub.add_parser("embed", help="embed a manifest into a Parquet feature store (Ray Data)"))
    train_job.build_parser(sub.add_parser("train", help="train the projection progressively on a feature store (Ray Train)"))
    train_job.build_parser(sub.add_parser("tune", help="search each stage's training settings (Ray Tune, ASHA) on the cached "
                                                       "features, then train with the best (like train)"), tune=True)
    serve_job.build_parser(sub.add_parser("serve", help="serve a model artifact over HTTP on Ray Serve (OpenAI-compatible)"))
    evaluate_job.build_parser(sub.add_parser("evaluate", help="retrieval, zero-shot and modality-gap report of a model artifact"))
    submit = sub.add_parser("submit", help="submit a job to a Ray cluster (job API), follow its logs, exit with its status")
    submit.add_argument("job", help="embed, train, evaluate, serve, benchmark-embed, benchmark-train or benchmark-serve")
    submit.add_argument("--address", default=None, help="the cluster's job API, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)")
    submit.add_argument("--config", help="the job's YAML config, inside this project (uploaded as the working dir)")
    submit.add_argument("--no-follow", action="store_true", help="return after submitting instead of following the logs")
    submit.epilog = "Arguments after -- go to the job, e.g. `oneencoder submit embed --address URL -- --input s3://...`."
    sample = sub.add_parser("sample-corpus", help="write a small generated paired corpus and its manifest")
    sample.add_argument("dest", help="folder to write")
    sample.add_argument("--n", type=int, default=24, help="number of samples (default 24)")
    demo = sub.add_parser("demo", help="generate a corpus, embed, train 3 stages, evaluate (offline, local Ray, a few minutes)")
    demo.add_argument("--workdir", help="folder for corpus, features, model (default $ONEENCODER_CACHE/demo, "
                      "else ~/.cache/oneencoder/demo: nothing is written into the current folder)")
    demo.add_argument("--samples", type=int, default=96, help="paired samples to generate (default 96)")
    demo.add_argument("--epochs", type=int, help="epochs of each stage (default: the training job's automatic budget)")
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier demo run in --workdir (default: resume it)")
    reference = sub.add_parser("config-reference", help="print every config field with its default and meaning")
    reference.add_argument("job", nargs="?", choices=sorted(CONFIGS), help="one job's config (default: all)")
    return parser


def parse_command_line(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """Parse ``argv``; for `submit`, everything after the first `--` is kept, unparsed, in ``args.args``.

    (argparse cannot take a trailing free-form list after a sub-command's options itself.)
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if argv[:1] == ["submit"] and "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = (parser or build_parser()).parse_args(argv)
    if args.command == "submit":
        args.args = extra
    return args


def main(argv: list[str] | None = None) -> int:
    from jobs import embed as embed_job
    from jobs import evaluate as evaluate_job
    from jobs import serve as serve_job
    from jobs import train as train_job

    parser = build_parser()
    args = parse_command_line(argv, parser)
    if args.command == "embed":
        return embed_job.run(args)
    if args.command == "evaluate":
        return evaluate_job.run(args)
    if args.command in ("train", "tune"):
        return train_job.run(args)
    if args.command == "serve":
        return serve_job.run(args)
    if args.command == "submit":
        import os

        from pipeline.config import ConfigError
        from pipeline.submit import submit as submit_job

        address = args.address or os.environ.get("RAY_ADDRESS")
        if not address:
            parser.error("submit needs --address http://HEAD:8265 (or RAY_ADDRESS)")
        try:
            return submit_job(args.job, address, args.config, args.args, follow=not args.no_follow)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.command == "demo":
        from pipeline.config import ConfigError
        from pipeline.demo import default_workdir, run_demo
        from pipeline.runtime import setup_logging

        if args.samples < 24 or (args.epochs is not None and args.epochs < 1):
            parser.error(f"demo needs --samples >= 24 (one per concept) and --epochs >= 1, got {args.samples} and {args.epochs}")
        setup_logging()
        try:
            run_demo(args.workdir or default_workdir(), args.samples, args.epochs, overwrite=args.overwrite)
        except ConfigError as e:  # e.g. a --workdir holding another run: said before Ray starts
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    if args.command == "sample-corpus":
        from pipeline.corpus import write_sample_corpus

        if args.n < 1:
            parser.error(f"--n must be at least 1, got {args.n}")
        print(write_sample_corpus(args.dest, n=args.n))
        return 0
    print("\n".join(job_config_reference(args.job)))
    return 0


CONFIGS = {  # job -> (module, config class, where its fields go)
    "embed": ("pipeline.config", "EmbedConfig", "python -m jobs.embed --config FILE"),
    "train": ("pipeline.train_config", "TrainConfig", "python -m jobs.train --config FILE"),
    "evaluate": ("pipeline.job_configs", "EvaluateConfig", "python -m jobs.evaluate --config FILE"),
    "serve": ("serving.config", "ServeArgs", "applications[].args of a Serve config (serving/serve_config.yaml)"),
    "benchmark-embed": ("pipeline.job_configs", "BenchmarkEmbedConfig", "python -m jobs.benchmark_embed --config FILE"),
    "benchmark-train": ("pipeline.job_configs", "BenchmarkTrainConfig", "python -m jobs.benchmark_train --config FILE"),
    "benchmark-serve": ("pipeline.job_configs", "BenchmarkServeConfig", "python -m jobs.benchmark_serve --config FILE"),
}


def job_config_reference(job: str | None = None) -> list[str]:
    """Every field of ``job``'s config (default: of every job), one section per job."""
    import importlib

    from pipeline.config import config_reference

    lines: list[str] = []
    for name in [job] if job else list(CONFIGS):
        module, cls, where = CONFIGS[name]
        if lines:
            lines.append("")
        lines += [f"[{name}] {where}", *config_reference(getattr(importlib.import_module(module), cls))]
    return lines


if __name__ == "__main__":
    sys.exit(main())
