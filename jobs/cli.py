"""The ``oneencoder`` command: one sub-command per registered job (jobs/registry.py), plus `submit` and
`config-reference`."""
from __future__ import annotations

import argparse
import sys

from jobs.registry import JOBS, build_parser as job_parser, config_reference, execute


def build_parser() -> argparse.ArgumentParser:
    """The `oneencoder` command line: each job's flags come from its config's fields."""
    parser = argparse.ArgumentParser(prog="oneencoder", description="OneEncoder on Ray: embed media corpora into one space.")
    sub = parser.add_subparsers(dest="command", required=True)
    for job in JOBS.values():
        job_parser(job, sub.add_parser(job.name, help=job.summary, description=job.summary))
    submit = sub.add_parser("submit", help="submit a job to a Ray cluster (job API), follow its logs, exit with its status")
    submit.add_argument("job", choices=[j.name for j in JOBS.values() if j.submit], help="the job to run on the cluster")
    submit.add_argument("--address", default=None, help="the cluster's job API, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)")
    submit.add_argument("--config", help="the job's YAML config, inside this project (uploaded as the working dir)")
    submit.add_argument("--no-follow", action="store_true", help="return after submitting instead of following the logs")
    submit.epilog = "Arguments after -- go to the job, e.g. `oneencoder submit embed --address URL -- --input s3://...`."
    reference = sub.add_parser("config-reference", help="print every config field with its default and meaning")
    reference.add_argument("job", nargs="?", choices=[j for j in JOBS if j != "tune"], help="one job's config (default: all)")
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
    parser = build_parser()
    args = parse_command_line(argv, parser)
    if args.command in JOBS:
        return execute(JOBS[args.command], args)
    if args.command == "submit":
        import os

        from jobs.submit import submit as submit_job
        from pipeline.config import ConfigError

        address = args.address or os.environ.get("RAY_ADDRESS")
        if not address:
            parser.error("submit needs --address http://HEAD:8265 (or RAY_ADDRESS)")
        try:
            return submit_job(args.job, address, args.config, args.args, follow=not args.no_follow)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except RuntimeError as e:  # the job API refused the submission (its status and text are in the message)
            print(f"error: {e}", file=sys.stderr)
            return 1
    print("\n".join(config_reference(args.job)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
