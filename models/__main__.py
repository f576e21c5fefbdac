"""`python -m models build | accelerate | evaluate | report | publish-features`: the offline
pipeline's command line.

`evaluate` and `report` read the repository with numpy only; `build` imports torch;
`accelerate` needs onnx and nncf (the train extra) but not torch.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from config.settings import Settings, SettingsError, load_settings
from models.artifacts import repository
from models.ctr_table import TableError
from models.rows_file import RowsFileError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__)
    parser.add_argument(
        "--settings", type=Path, help="settings file (default: the built-in defaults)"
    )
    parser.add_argument("--repository", type=Path, help="repository root (default: settings)")
    add_noise_options(parser, default=False)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="train, export and write the default repository")
    build.add_argument("--movielens", type=Path, help="folder with the ml-100k.* files")
    build.add_argument(
        "--data", type=Path, help="build from your CTR table instead (Criteo's tab-separated "
        "layout: label, 13 numbers, 26 tokens; see [table])",
    )  # fmt: skip
    build.add_argument(
        "--model", help="the model's name (default: settings; with --data, the file's name)"
    )
    build.add_argument("--max-epochs", type=int, help="cap training epochs (quick builds)")
    build.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")])
    for name, text in (("evaluate", "score every variant on the test split"),
                       ("report", "print the report of a built version")):  # fmt: skip
        command = commands.add_parser(name, help=text)
        command.add_argument("--model", help="model name (default: settings)")
        command.add_argument("--version", type=int, help="version (default: the latest)")
    to_redis = commands.add_parser(
        "publish-features", help="write a built version's feature rows and seen items to Redis"
    )
    to_redis.add_argument("--model", help="model name (default: settings)")
    to_redis.add_argument("--version", type=int, help="version (default: the latest)")
    to_redis.add_argument("--redis", help="Redis URL (default: [features] redis_url)")
    accelerate = commands.add_parser(
        "accelerate", help="INT8, FP16 and BF16 variants of a plain model.onnx, gated on your rows"
    )
    accelerate.add_argument("version_path", type=Path, metavar="ROOT/MODEL/VERSION")
    accelerate.add_argument(
        "--eval",
        type=Path,
        required=True,
        dest="eval_file",
        help=".npz of held-out rows: one array per input, optional labels",
    )
    accelerate.add_argument(
        "--calibration",
        type=Path,
        help=".npz of calibration rows for INT8 (default: the --eval rows)",
    )
    accelerate.add_argument(
        "--quantize-outputs",
        action="store_true",
        help="quantize the output layers too (the gate usually refuses it)",
    )
    for command in commands.choices.values():
        # `build --quiet` as well as `--quiet build`; SUPPRESS keeps the top level's value.
        add_noise_options(command, default=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # Progress by default: each stage, a bar per training run, each step's and gate's result.
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s" if args.verbose else "%(message)s",
    )
    if not args.quiet:
        logging.getLogger("models").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    problem = missing_path(args)
    try:
        settings = load_settings(args.settings, **settings_overrides(args))
    except SettingsError as exc:
        problem = str(exc)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    root = settings.repository.root

    try:
        if args.command == "build":
            from tqdm.contrib.logging import logging_redirect_tqdm

            from models.build import build as run_build  # imports torch
            from models.table_build import build_from_table

            with logging_redirect_tqdm():  # log lines above the progress bars, not through them
                if args.data:
                    path = build_from_table(settings, args.data)
                else:
                    path = run_build(settings, movielens_path=args.movielens)
            print((path / "report.md").read_text(encoding="utf-8"))
            print(f"Model repository written to {path}")
            return 0
        if args.command == "accelerate":
            from models.accelerate import accelerate as run_accelerate

            run_accelerate(args.version_path, args.eval_file, args.calibration, settings,
                           quantize_outputs=args.quantize_outputs)  # fmt: skip
            print((args.version_path / "report.md").read_text(encoding="utf-8"))
            return 0
        version = repository.open_version(
            root, args.model or settings.repository.model_name, args.version
        )
        return run_on_version(args, settings, version)
    except (repository.RepositoryError, RowsFileError, TableError, RuntimeError,
            FileNotFoundError) as exc:  # fmt: skip
        print(f"error: {exc}", file=sys.stderr)
        return 1


def run_on_version(args: argparse.Namespace, settings: Settings,
                   version: repository.ModelVersion) -> int:  # fmt: skip
    """The commands that read a built version: report, publish-features, evaluate."""
    if args.command == "report":
        print((version.path / "report.md").read_text(encoding="utf-8"))
        return 0
    if args.command == "publish-features":
        from models.publish_features import publish

        url = args.redis or settings.features.redis_url
        counts = publish(version, url, settings.features.key_prefix)
        print(f"{version.path}: {counts['users']} user rows, {counts['items']} item rows and "
              f"{counts['seen']} seen-item sets written to {url}")  # fmt: skip
        return 0
    return print_evaluation(version)


def add_noise_options(parser: argparse.ArgumentParser, default: object) -> None:
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="log every epoch, timestamped")  # fmt: skip
    noise.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="no progress, warnings only")  # fmt: skip


def missing_path(args: argparse.Namespace) -> str | None:
    """A path the user named that is not there (rather than, for --movielens, silently fetching
    the data instead)."""
    if args.command != "build":
        return None
    if args.movielens is not None and not args.movielens.is_dir():
        return f"--movielens {args.movielens}: no such folder"
    if args.data is not None and not args.data.is_file():
        return f"--data {args.data}: no such file"
    return None


def settings_overrides(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    overrides: dict[str, dict[str, object]] = {}
    if args.repository:
        overrides["repository"] = {"root": args.repository}
    if args.command == "build":
        if args.max_epochs:
            overrides["training"] = {"max_epochs": args.max_epochs}
        if args.seeds:
            overrides.setdefault("training", {})["seeds"] = args.seeds
        name: str | None = args.model or (model_name_of(args.data) if args.data else None)
        if name:
            overrides.setdefault("repository", {})["model_name"] = name
    return overrides


def model_name_of(data: Path) -> str:
    """A repository name from a data file's: `Day_0.tsv` -> `day_0`."""
    name = re.sub(r"[^a-z0-9._-]+", "-", data.stem.lower()).strip("-._")
    return name or "ctr-model"


def print_evaluation(version: repository.ModelVersion) -> int:
    from models.evaluate import evaluate_version

    results = evaluate_version(version)
    manifest = version.manifest
    print(f"{manifest.model_name} version {manifest.model_version}: test split, "
          f"{manifest.split.rows['test']:,} rows (seed {manifest.split.seed})")  # fmt: skip
    print(f"{'variant':<22} {'runtime':<12} {'precision':<22} {'AUC':>8} {'log loss':>9} manifest")
    for r in results:
        verdict = "ok" if r.matches_manifest else f"MISMATCH (manifest {r.manifest_auc:.4f})"
        print(f"{r.variant:<22} {r.runtime:<12} {r.execution_precision:<22} {r.test_auc:>8.4f} "
              f"{r.test_log_loss:>9.4f} {verdict}")  # fmt: skip
    return 0 if all(r.matches_manifest for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
