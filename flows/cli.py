"""The `trml` command: one subcommand per pipeline stage (dvc.yaml calls these).

Orchestration only: each handler validates params.yaml first, then calls into
features/ (media -> Parquet), flows/ (Prefect) or trml/ (Parquet -> models and metrics).
Outside a project (no params.yaml here and no --params), sample, index, extract, bench and serve run
on the built-in defaults. Heavy imports happen inside handlers so that `trml --help` is instant.
"""
from __future__ import annotations

import argparse
import json
import logging
import pickle
import sys
from pathlib import Path
from typing import get_args

from features.adapters import AdapterError
from features.config import FEATURE_SETS
from features.weights import WeightsError
from flows.params import PARAMS_FILE, ParamsError, default_params, load_params
from trml.config import Variant

log = logging.getLogger("trml")


def _params(args, standalone: bool = False):
    """params.yaml, validated. A command that needs no project (`standalone`) runs on the built-in defaults
    where there is no ./params.yaml and no --params was given."""
    if args.params is not None:
        return load_params(args.params)
    if standalone and not PARAMS_FILE.is_file():
        log.debug("no %s here: using the built-in defaults", PARAMS_FILE)
        return default_params()
    return load_params(PARAMS_FILE)


def cmd_sample(args) -> int:
    from features.sample import generate_sample
    p = _params(args, standalone=True)
    cfg = p.sample if args.size is None else _with_option(p.sample, "size", args.size)
    summary = generate_sample(Path(args.out), cfg)
    print(json.dumps(summary, indent=2))
    return 0


def _with_option(section, key: str, value):
    """A params section with one value replaced by a command-line option, validated like params.yaml."""
    from pydantic import ValidationError
    try:
        return type(section).model_validate({**section.model_dump(), key: value})
    except ValidationError as exc:
        raise ParamsError(f"--{key.replace('_', '-')} {value}: {exc.errors()[0]['msg']}") from None


def cmd_index(args) -> int:
    from features.adapters import index_dataset
    p = _params(args, standalone=True)
    if args.layout is None and args.root is None:
        if args.dataset not in p.datasets and args.dataset not in p.mmsa_pickles:
            where = f"not in {args.params or PARAMS_FILE}" if args.params or PARAMS_FILE.is_file() \
                else "no params.yaml here"
            raise ParamsError(f"dataset {args.dataset!r}: {where}, so give --layout and --root (e.g. `trml index "
                              f"--layout folder --root ~/videos --dataset {args.dataset}`), or add it under "
                              f"`datasets:` in params.yaml")
        ds = p.dataset(args.dataset)
    else:
        if args.layout is None or args.root is None:
            raise SystemExit("error: give both --layout and --root, or neither (then params.yaml's "
                             f"datasets entry {args.dataset!r} is used)")
        base = p.datasets[args.dataset].model_dump() if args.dataset in p.datasets else {}
        base.update(name=args.dataset, layout=args.layout, root=args.root)
        if args.task:
            base["task"] = args.task
        from features.config import DatasetConfig
        ds = DatasetConfig.model_validate(base)
    out = Path(args.out) if args.out else Path(args.data_dir) / "index" / f"{ds.name}.parquet"
    summary = index_dataset(ds, out)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_extract(args) -> int:
    p = _params(args, standalone=True)
    if not args.all and args.feature_set is None:
        raise SystemExit("error: give --feature-set SET or --all")
    if args.dataset in p.mmsa_pickles:
        p.dataset(args.dataset)                # refuses it, with the reason (no raw media)
    from features.extractors import resolve_device
    resolve_device(p.extract.device)           # a settings error first, before any data is looked for
    # The dataset needs no params entry: its manifest (from `trml index`) records the raw root and layout.
    manifest = Path(args.data_dir) / "index" / f"{args.dataset}.parquet"
    if not manifest.is_file():
        how = f"--dataset {args.dataset}" if args.dataset in p.datasets else \
            f"--layout folder --root DIR --dataset {args.dataset}"
        raise ParamsError(f"{manifest}: manifest not found; run `trml index {how}` first"
                          + (f" (with --data-dir {args.data_dir})" if args.data_dir != "data" else ""))
    from flows.extract import extract_dataset
    sets = list(p.feature_sets) if args.all else [args.feature_set]
    reports = extract_dataset(p, args.dataset, sets, runner=args.runner, dask_address=args.dask_address,
                              data_dir=Path(args.data_dir))
    for report in reports:
        print(report.path)
    return 0


def cmd_train(args) -> int:
    from trml.train import train
    p = _params(args)
    model = p.model_for(args.dataset)          # a raw dataset, or an imported MMSA pickle (its own modalities)
    cfg = p.train if args.variant is None else p.train.model_copy(update={"variant": args.variant})
    train(args.dataset, model, cfg, data_dir=Path(args.data_dir), models_dir=Path(args.models_dir),
          plots_dir=Path(args.plots_dir))
    return 0


def cmd_evaluate(args) -> int:
    from trml.evaluate import evaluate
    p = _params(args)
    evaluate(args.dataset, p.model_for(args.dataset), p.train, p.evaluate, data_dir=Path(args.data_dir),
             models_dir=Path(args.models_dir), reports_dir=Path(args.reports_dir),
             plots_dir=Path(args.plots_dir))
    return 0


def cmd_compare(args) -> int:
    from trml.compare import compare
    p = _params(args)
    compare(args.dataset, p.model_for(args.dataset), p.train, p.evaluate, p.compare, data_dir=Path(args.data_dir),
            models_dir=Path(args.models_dir), reports_dir=Path(args.reports_dir),
            metrics_dir=Path(args.metrics_dir), plots_dir=Path(args.plots_dir),
            trained_dir=Path(args.trained_dir) if args.trained_dir else None)
    return 0


def cmd_report(args) -> int:
    from trml.report import write_report
    path = write_report(Path(args.reports_dir), args.dataset, args.format, Path(args.out) if args.out else None)
    print(path.read_text() if args.format == "markdown" else f"wrote {path}")
    return 0


def cmd_bench(args) -> int:
    from features.config import FEATURE_SETS
    from flows.bench import run_bench
    p = _params(args, standalone=True)
    unknown = [fs for fs in args.feature_set or [] if fs not in FEATURE_SETS]
    if unknown:
        raise ParamsError(f"--feature-set {' '.join(unknown)}: not a feature set; choose from {list(FEATURE_SETS)}")
    run_bench(p, sizes=args.sizes, feature_sets=args.feature_set, out=Path(args.out) if args.out else None)
    return 0


def cmd_serve(args) -> int:
    from flows.serve import serve
    p = _params(args, standalone=True)
    serve(p, root=Path(args.root), dataset=args.dataset, cron=args.cron, feature_sets=args.feature_set)
    return 0


def cmd_import_mmsa(args) -> int:
    from features.mmsa_pickle import import_mmsa
    if args.params is not None or PARAMS_FILE.is_file():  # a project: never overwrite a raw dataset's manifest
        p = _params(args)
        if args.dataset in p.datasets:
            raise ParamsError(f"--dataset {args.dataset} is datasets.{args.dataset} in {args.params} (raw media); "
                              f"importing would overwrite its manifest. Pick another name, e.g. "
                              f"{args.dataset}_mmsa, and add it under `mmsa_pickles:` to train on it with dvc")
    try:
        summary = import_mmsa(Path(args.pkl), args.dataset, Path(args.index_dir), Path(args.features_dir))
    except (pickle.UnpicklingError, ValueError, KeyError, OSError) as exc:
        print(f"error: {args.pkl}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


def cmd_export_mmsa(args) -> int:
    from features.mmsa_pickle import export_mmsa
    p = _params(args)
    m = p.model.modalities
    sets = {"text": args.text or m.text, "audio": args.audio or m.audio, "vision": args.vision or m.face or m.vision}
    missing = [k for k, v in sets.items() if v is None]
    if missing:
        raise SystemExit(f"error: no feature set for {missing}; pass --{missing[0]} SET")
    needed = [Path(args.index_dir) / f"{args.dataset}.parquet"] + \
        [Path(args.features_dir) / args.dataset / f"{fs}.parquet" for fs in sets.values()]
    absent = [str(path) for path in needed if not path.is_file()]
    if absent:
        raise ParamsError(f"{absent[0]}: not found (export reads the manifest and the feature tables "
                          f"{sorted(set(sets.values()))}); run `trml index` and `trml extract` for "
                          f"--dataset {args.dataset} first")
    summary = export_mmsa(args.dataset, Path(args.out), sets, args.seq_len, Path(args.index_dir),
                          Path(args.features_dir))
    print(json.dumps(summary, indent=2))
    return 0


def cmd_plots(args) -> int:
    if not Path("dvc.yaml").is_file():
        raise ParamsError("no dvc.yaml here: `trml plots` renders a DVC project's plots; run it from the "
                          "project root after `dvc repro`")
    from flows.plots import show_plots
    index = show_plots(Path(args.out))
    print(f"offline plots page: {index}")
    return 0


def cmd_show_metrics(args) -> int:
    """The headline numbers of every dataset (metrics/*.json), then its results table (reports/<d>/results.md)."""
    metrics_dir, reports_dir = Path(args.metrics_dir), Path(args.reports_dir)
    files = sorted(metrics_dir.glob("*.json"))
    if not files:
        raise SystemExit(f"error: no metrics in {metrics_dir}/ yet; run `dvc repro` (or `trml compare`) first")
    for f in files:
        print(f"== {f}")
        headline = json.loads(f.read_text())            # flat: {"mae_r0.0": 0.61, ..., "vs_zf_hi": 0.01}
        print("  " + "  ".join(f"{k} {v:.4f}" if isinstance(v, (int, float)) else f"{k} -"
                               for k, v in headline.items()))
        table = reports_dir / f.stem / "results.md"
        if table.is_file():
            print()
            print(table.read_text())
    return 0


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage mistake printed as one line (what, and where the help is), not usage + error."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    ap = OneLineParser(
        prog="trml",
        description="TRML pipeline: sample -> index -> extract -> train -> evaluate -> compare. "
                    "Every subcommand reads params.yaml (validated first). Outside a project (no "
                    "./params.yaml), sample, index, extract, bench and serve run on the built-in defaults.")
    ap.add_argument("--params", default=None,
                    help="params file (default: ./params.yaml; without one, the built-in defaults where a "
                         "command needs no project)")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="debug logging, the native libraries' own start-up notes (mediapipe), and the "
                         "traceback behind an error")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("sample", help="write the built-in sample benchmark (MMSA layout)",
                       description="Generate the deterministic sample benchmark: real H.264+AAC mp4 "
                                   "clips and label.csv, with a few deliberately defective clips.")
    s.add_argument("--out", default="data/raw/sample", help="output folder (default: data/raw/sample)")
    s.add_argument("--size", type=int, default=None, help="number of clips (default: params sample.size)")
    s.set_defaults(func=cmd_sample)

    s = sub.add_parser("index", help="write the manifest Parquet of a raw dataset",
                       description="Read a raw layout (mmsa, meld or folder) and write "
                                   "<data-dir>/index/<dataset>.parquet, one row per utterance. Outside a project "
                                   "(no params.yaml), give --layout and --root: `trml index --layout folder "
                                   "--root ~/videos --dataset mine` writes ./data/index/mine.parquet.")
    s.add_argument("--dataset", required=True, help="dataset name (a params.yaml datasets entry, or a new name)")
    s.add_argument("--layout", choices=["mmsa", "meld", "folder"], help="raw layout (default: from params)")
    s.add_argument("--root", help="raw dataset folder (default: from params)")
    s.add_argument("--task", choices=["regression", "classification"], help="override the task")
    s.add_argument("--data-dir", default="data", help="output folder (default: data): the manifest goes to "
                   "<data-dir>/index/<dataset>.parquet, where `trml extract --data-dir` finds it")
    s.add_argument("--out", help="manifest path (default: <data-dir>/index/<dataset>.parquet)")
    s.set_defaults(func=cmd_index)

    s = sub.add_parser("extract", help="extract feature sets into Parquet (a Prefect flow)",
                       description="Run the Prefect extraction flow over a dataset's manifest "
                                   "<data-dir>/index/<dataset>.parquet and write "
                                   "<data-dir>/features/<dataset>/<feature_set>.parquet. The dataset needs no "
                                   "params.yaml entry: the manifest written by `trml index` records its raw "
                                   "folder and layout. Outside a project (no params.yaml), the built-in defaults "
                                   "apply.")
    s.add_argument("--dataset", required=True, help="the name given to `trml index`")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--feature-set", choices=FEATURE_SETS)
    g.add_argument("--all", action="store_true", help="every feature set in params feature_sets")
    s.add_argument("--runner", choices=["thread", "dask"], default=None, help="default: params extract.runner")
    s.add_argument("--dask-address", default=None, help="existing Dask scheduler, e.g. tcp://host:8786")
    s.add_argument("--data-dir", default="data", help="folder holding index/ and features/ (default: data)")
    s.set_defaults(func=cmd_extract)

    for name, func, helptext in [
        ("train", cmd_train, "train TRML (or a variant) on a dataset's feature tables"),
        ("evaluate", cmd_evaluate, "evaluate the trained model at every test missing rate and pattern"),
        ("compare", cmd_compare, "train and evaluate every variant over compare.seeds; write "
                                 "reports/<dataset>/ (compare.json, results.md, predictions), metrics/<dataset>.json "
                                 "(the headline numbers) and plots"),
    ]:
        s = sub.add_parser(name, help=helptext, description=helptext)
        s.add_argument("--dataset", required=True)
        s.add_argument("--data-dir", default="data")
        s.add_argument("--models-dir", default="models")
        if name == "train":
            s.add_argument("--variant", choices=get_args(Variant),
                           default=None, help="default: params train.variant")
            s.add_argument("--plots-dir", default="plots",
                           help="the per-epoch log is copied to <plots-dir>/<dataset>/train_<variant>.csv")
        else:
            s.add_argument("--reports-dir", default="reports",
                           help="full results go to <reports-dir>/<dataset>/ (default: reports)")
            s.add_argument("--plots-dir", default="plots")
        if name == "compare":
            s.add_argument("--metrics-dir", default="metrics",
                           help="the headline numbers go to <metrics-dir>/<dataset>.json (default: metrics)")
            s.add_argument("--trained-dir", default=None,
                           help="models trained by `trml train` (e.g. models): a finished run there with the same "
                                "settings, data and seed is reused instead of trained again")
        s.set_defaults(func=func)

    s = sub.add_parser("report", help="the results table of a comparison, as Markdown or a LaTeX tabular",
                       description="Render reports/<dataset>/compare.json (written by `trml compare`) as the "
                                   "paper-style table: variants x missing rates and patterns, mean +- sd over "
                                   "seeds, the best in bold, the upper bound as a reference row, the 95% CIs of "
                                   "trml - each baseline, and the lineage. LaTeX is a booktabs tabular.")
    s.add_argument("--dataset", required=True)
    s.add_argument("--format", choices=["markdown", "latex"], default="markdown")
    s.add_argument("--reports-dir", default="reports")
    s.add_argument("--out", default=None,
                   help="output file (default: <reports-dir>/<dataset>/results.md or results.tex)")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("bench", help="benchmark extraction: throughput, overhead ratio, peak memory",
                       description="Time each feature set on the sample benchmark against the bare model "
                                   "forward on the same inputs, and measure peak RSS of `trml extract --all`.")
    s.add_argument("--sizes", type=int, nargs="+", default=None, help="sample sizes for the memory runs")
    s.add_argument("--feature-set", nargs="+", default=None)
    s.add_argument("--out", default=None, help="write the results as JSON here")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("serve", help="schedule extraction over a raw folder with cron (Prefect)",
                       description="Serve a Prefect deployment that indexes and extracts a raw folder "
                                   "on a cron schedule. Uses PREFECT_API_URL when set.")
    s.add_argument("--root", required=True, help="raw folder of videos (folder layout)")
    s.add_argument("--dataset", required=True, help="dataset name for the outputs")
    s.add_argument("--cron", default="0 * * * *", help="cron schedule (default: hourly)")
    s.add_argument("--feature-set", nargs="+", default=None)
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("import-mmsa", help="import an MMSA/MMSA-FET feature pickle as manifest + Parquet",
                       description="Read an MMSA feature pickle (aligned_50.pkl, unaligned_50.pkl) and write "
                                   "data/index/<dataset>.parquet and data/features/<dataset>/mmsa_{text,audio,"
                                   "vision}.parquet. WARNING: unpickling untrusted files is unsafe; this uses a "
                                   "restricted unpickler that refuses anything but dicts, lists, strings, numbers "
                                   "and numpy arrays, but only open pickles from sources you trust.")
    s.add_argument("pkl", help="the MMSA pickle")
    s.add_argument("--dataset", required=True)
    s.add_argument("--index-dir", default="data/index")
    s.add_argument("--features-dir", default="data/features")
    s.set_defaults(func=cmd_import_mmsa)

    s = sub.add_parser("export-mmsa", help="export feature sets as an MMSA feature pickle",
                       description="Write a dataset's manifest and feature tables in MMSA's pickle layout "
                                   "(padded arrays + lengths), so MMSA's models run on our features.")
    s.add_argument("--dataset", required=True)
    s.add_argument("--out", required=True, help="output .pkl")
    s.add_argument("--text", help="feature set for MMSA's text (default: params model.modalities.text)")
    s.add_argument("--audio", help="feature set for MMSA's audio (default: model.modalities.audio)")
    s.add_argument("--vision", help="feature set for MMSA's vision (default: model.modalities.face, else vision)")
    s.add_argument("--seq-len", type=int, default=None, help="pad/truncate length (default: the longest)")
    s.add_argument("--index-dir", default="data/index")
    s.add_argument("--features-dir", default="data/features")
    s.set_defaults(func=cmd_export_mmsa)

    s = sub.add_parser("plots", help="render `dvc plots show` as an HTML page that works offline",
                       description="Build an HTML template with vega, vega-lite and vega-embed inlined (from "
                                   "the npm registry, once) and run `dvc plots show` with it.")
    s.add_argument("--out", default="dvc_plots", help="output folder (default: dvc_plots)")
    s.set_defaults(func=cmd_plots)

    s = sub.add_parser("show-metrics", help="print the headline metrics and each dataset's results table")
    s.add_argument("--metrics-dir", default="metrics")
    s.add_argument("--reports-dir", default="reports")
    s.set_defaults(func=cmd_show_metrics)
    return ap


# Errors that a user's mistake raises (a missing or malformed file, setting or input, a stage run out of
# order); each message names the file or key and the fix. They live in modules the handlers import lazily:
# one that was never imported cannot have raised, so they are looked up among the loaded modules.
USER_ERRORS = (
    ("trml.data", "DataError"),                         # manifest or feature tables missing or malformed
    ("trml.evaluate", "StaleModelError"),               # the checkpoint was trained on other settings or data
    ("trml.device", "DeviceUnavailableError"),
    ("features.extractors.torch_utils", "DeviceUnavailableError"),
    ("features.mmsa_pickle", "UnsafePickleError"),
    ("flows.extract", "ExtractionError"),
    ("features.store", "ManifestError"),                # the manifest has no trml.root or repeats an id
    ("flows.plots", "PlotsError"),
    ("trml.report", "ReportError"),                     # no comparison to report on yet
)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message names the setting and the fix: printed as one line, without a traceback.

    FileNotFoundError is one too: out of a handler, it is a file the user named, or a stage's input not
    made yet, and its message names the file.
    """
    errors: list[type[BaseException]] = [ParamsError, AdapterError, WeightsError, FileNotFoundError]
    for module, name in USER_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None:
            errors.append(cls)
    return tuple(errors)


def one_line(exc: BaseException) -> str:
    """The error as one line: a message listing several problems on several lines is joined with ' | '."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " | ".join(lines) or type(exc).__name__


class HideUserErrorTracebacks(logging.Filter):
    """Prefect logs an exception raised inside a flow or task run, with its traceback, before the CLI sees it;
    for a user error (a WeightsError while the extractors load, say) the CLI's one line says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _user_errors()))


def configure_logging(verbose: bool) -> None:
    """Libraries log at WARNING (open_clip logs every step of model creation at INFO on the root logger);
    this project's own progress logs at INFO. Verbose (-v) shows everything, mediapipe's native start-up
    notes included (features.extractors.face_mediapipe keeps them out of the terminal below DEBUG)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for package in ("trml", "features", "flows"):
        logging.getLogger(package).setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        for f in [f for f in logger.filters if isinstance(f, HideUserErrorTracebacks)]:
            logger.removeFilter(f)
        if not verbose:
            logger.addFilter(HideUserErrorTracebacks())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return args.func(args) or 0
    except SystemExit as exc:         # `raise SystemExit("error: ...")` in a handler: the message, on one line
        if args.verbose or not isinstance(exc.code, str):
            raise
        print(one_line(exc.code), file=sys.stderr)
        return 1
    except Exception as exc:
        if args.verbose or not isinstance(exc, _user_errors()):
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
