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
import sys
from pathlib import Path

from common.errors import USER_ERROR_EXIT, UserError, one_line
from common.layout import manifest_path
from features.config import FEATURE_SETS
from flows.params import PARAMS_FILE, ParamsError, default_params, load_params

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
    if args.size is not None:
        p = p.with_option("sample", "size", args.size)
    print(json.dumps(generate_sample(Path(args.out), p.sample), indent=2))
    return 0


def cmd_index(args) -> int:
    from features.adapters import index_dataset
    p = _params(args, standalone=True)
    where = f"not in {args.params or PARAMS_FILE}" if args.params or PARAMS_FILE.is_file() else "no params.yaml here"
    ds = p.dataset_to_index(args.dataset, args.layout, args.root, args.task, where=where)
    out = Path(args.out) if args.out else manifest_path(args.data_dir, ds.name)
    print(json.dumps(index_dataset(ds, out), indent=2))
    return 0


def cmd_extract(args) -> int:
    from flows.extract import extract_dataset
    p = _params(args, standalone=True)
    if not args.all and args.feature_set is None:
        raise UserError("give --feature-set SET or --all")
    sets = list(p.feature_sets) if args.all else [args.feature_set]
    for report in extract_dataset(p, args.dataset, sets, runner=args.runner, dask_address=args.dask_address,
                                  data_dir=Path(args.data_dir)):
        print(report.path)
    return 0


def cmd_train(args) -> int:
    from trml.train import train
    p = _params(args)
    model = p.model_for(args.dataset)          # a raw dataset, or an imported MMSA pickle (its own modalities)
    cfg = p.train if args.variant is None else p.with_option("train", "variant", args.variant).train
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
    from flows.bench import run_bench
    p = _params(args, standalone=True)
    run_bench(p, sizes=args.sizes, feature_sets=args.feature_set, out=Path(args.out) if args.out else None)
    return 0


def cmd_serve(args) -> int:
    from flows.serve import serve
    p = _params(args, standalone=True)
    serve(p, root=Path(args.root), dataset=args.dataset, cron=args.cron, feature_sets=args.feature_set)
    return 0


def cmd_with_prefect(args) -> int:
    from flows.serve import run_with_server
    return run_with_server(args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line)


def cmd_import_mmsa(args) -> int:
    from features.mmsa_pickle import import_mmsa
    if args.params is not None or PARAMS_FILE.is_file():  # a project: never overwrite a raw dataset's manifest
        p = _params(args)
        if args.dataset in p.datasets:
            raise ParamsError(f"--dataset {args.dataset} is datasets.{args.dataset} in {args.params or PARAMS_FILE} "
                              f"(raw media); importing would overwrite its manifest. Pick another name, e.g. "
                              f"{args.dataset}_mmsa, and add it under `mmsa_pickles:` to train on it with dvc")
    print(json.dumps(import_mmsa(Path(args.pkl), args.dataset, Path(args.data_dir)), indent=2))
    return 0


def cmd_export_mmsa(args) -> int:
    from features.mmsa_export import export_feature_sets, export_mmsa
    p = _params(args)
    sets = export_feature_sets(p.model.modalities, args.text, args.audio, args.vision)
    print(json.dumps(export_mmsa(args.dataset, Path(args.out), sets, args.seq_len, Path(args.data_dir)), indent=2))
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
    from trml.report import show_metrics
    print(show_metrics(Path(args.metrics_dir), Path(args.reports_dir)), end="")
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
            s.add_argument("--variant", default=None,
                           help="a model name (default: params train.variant): trml, no_sml, zero_fill, upper_bound, "
                                "lf_dnn, tfn, mult, an entry point, or package.module:Class (docs/models.md)")
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
    s.add_argument("--feature-set", nargs="+", default=None, choices=FEATURE_SETS)
    s.add_argument("--out", default=None, help="write the results as JSON here")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("serve", help="schedule extraction over a raw folder with cron (Prefect)",
                       description="Serve a Prefect deployment that indexes and extracts a raw folder "
                                   "on a cron schedule. Uses PREFECT_API_URL when set.")
    s.add_argument("--root", required=True, help="raw folder of videos (folder layout)")
    s.add_argument("--dataset", required=True, help="dataset name for the outputs")
    s.add_argument("--cron", default="0 * * * *", help="cron schedule (default: hourly)")
    s.add_argument("--feature-set", nargs="+", default=None, choices=FEATURE_SETS)
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("with-prefect", help="run a command (e.g. dvc repro) with one Prefect server for all its flows",
                       description="Run COMMAND with PREFECT_API_URL pointing at one Prefect server: the one "
                                   "already set in PREFECT_API_URL, else a temporary `prefect server start` for the "
                                   "command's duration. Every extraction process of `dvc repro` then reuses it "
                                   "instead of starting Prefect's own temporary server. Example: "
                                   "`trml with-prefect -- dvc repro`.")
    s.add_argument("command_line", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    s.set_defaults(func=cmd_with_prefect)

    s = sub.add_parser("import-mmsa", help="import an MMSA/MMSA-FET feature pickle as manifest + Parquet",
                       description="Read an MMSA feature pickle (aligned_50.pkl, unaligned_50.pkl) and write "
                                   "data/index/<dataset>.parquet and data/features/<dataset>/mmsa_{text,audio,"
                                   "vision}.parquet. WARNING: unpickling untrusted files is unsafe; this uses a "
                                   "restricted unpickler that refuses anything but dicts, lists, strings, numbers "
                                   "and numpy arrays, but only open pickles from sources you trust.")
    s.add_argument("pkl", help="the MMSA pickle")
    s.add_argument("--dataset", required=True)
    s.add_argument("--data-dir", default="data", help="folder holding index/ and features/ (default: data)")
    s.set_defaults(func=cmd_import_mmsa)

    s = sub.add_parser("export-mmsa", help="export feature sets as an MMSA feature pickle",
                       description="Write a dataset's manifest and feature tables in MMSA's pickle layout "
                                   "(padded arrays + lengths), so MMSA's models run on our features. The "
                                   "manifest's label_T/label_A/label_V become regression_labels_T/_A/_V; a "
                                   "text table that records its tokenizer (text_hf) also gives text_bert.")
    s.add_argument("--dataset", required=True)
    s.add_argument("--out", required=True, help="output .pkl")
    s.add_argument("--text", help="feature set for MMSA's text (default: params model.modalities.text)")
    s.add_argument("--audio", help="feature set for MMSA's audio (default: model.modalities.audio)")
    s.add_argument("--vision", help="feature set for MMSA's vision (default: model.modalities.face, else vision)")
    s.add_argument("--seq-len", type=int, default=None,
                   help="pad/truncate length (default: the longest; text_bert: the text table's max_length, "
                        "else the longest)")
    s.add_argument("--data-dir", default="data", help="folder holding index/ and features/ (default: data)")
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


class HideUserErrorTracebacks(logging.Filter):
    """Prefect logs an exception raised inside a flow or task run, with its traceback, before the CLI sees it;
    for a user error (a WeightsError while the extractors load, say) the CLI's one line says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], UserError))


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
    except UserError as exc:          # a mistake the user can fix: one line (the traceback with -v)
        if args.verbose:
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return USER_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
