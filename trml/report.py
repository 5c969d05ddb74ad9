"""The paper-style results table, from reports/<dataset>/compare.json: Markdown (results.md) or LaTeX.

    variants x conditions (missing rates, their mean, single-modality patterns): mean +- sd over seeds of
    the task's headline metric (mae, wf1), the best of each column in bold; upper_bound as one reference
    row; then trml - each baseline with its 95% CI adjusted for the conditions compared (dagger where it
    excludes 0), the raw intervals, and what they promise at these seeds; then the lineage.

`trml report --dataset D --format latex` writes the same table as a booktabs tabular.
"""
from __future__ import annotations

import json
from pathlib import Path

from common.errors import UserError
from common.files import write_text_atomic
from common.layout import dataset_dir
from trml.metrics import LOWER_IS_BETTER
from trml.missing import INTRA_MEAN, RATE_MEAN, SUBSET_MEAN
from trml.stats import critical

DIGITS = 3


class ReportError(UserError, ValueError):
    """There is no comparison to report on; the message names the file and the command that writes it."""


def load_results(reports_dir: Path, dataset: str) -> dict:
    path = dataset_dir(reports_dir, dataset) / "compare.json"
    if not path.is_file():
        raise ReportError(f"{path}: not found; run `trml compare --dataset {dataset}` (or `dvc repro`) first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc}); run `trml compare --dataset {dataset}` again") from exc


def table_rows(results: dict, metric: str | None = None) -> dict:
    """What both formats print: headers, the variants' cells (with which are best), the reference and the
    differences, as plain strings."""
    metric = metric or results["headline"]
    conds = results["conditions"]
    lower = metric in LOWER_IS_BETTER
    variants = results["variants"]
    best = {}
    for c in conds:
        means = [variants[v][c][metric]["mean"] for v in variants if variants[v][c][metric]["mean"] is not None]
        best[c] = (min(means) if lower else max(means)) if means else None
    rows = []
    for v, by_cond in variants.items():
        cells = []
        for c in conds:
            s = by_cond[c][metric]
            cells.append((_mean_sd(s), s["mean"] is not None and round(s["mean"], DIGITS) == round(best[c], DIGITS)))
        rows.append((v, cells))
    reference = [(name, _mean_sd(by_metric[metric])) for name, by_metric in results["reference"].items()
                 if metric in by_metric]
    # The adjusted intervals carry the dagger; the raw ones are printed beside them, unmarked.
    diffs = [(base, [_diff(by_cond[c][metric], "ci95_adj", mark=True) for c in conds])
             for base, by_cond in results["differences"].items()]
    raw = [(base, [_diff(by_cond[c][metric], "ci95", mark=False) for c in conds])
           for base, by_cond in results["differences"].items()]
    return {"metric": metric, "lower_is_better": lower, "conditions": conds,
            "headers": [_header(c) for c in conds], "rows": rows, "reference": reference, "differences": diffs,
            "raw_differences": raw}


def guarantee(results: dict) -> str:
    """What the intervals promise at the seeds this comparison ran, in words (README, "Intervals")."""
    n = len(results["seeds"])
    m = results["method"].get("family_size", len(results["conditions"]))
    family = (f"The adjusted intervals (Bonferroni over the {m} conditions of each baseline) hold together with "
              f"probability at least 95%; each raw interval holds on its own.")
    if n < 2:
        return ("With 1 seed the intervals hold only the test set's uncertainty: training randomness is not in "
                "them, so they are too narrow wherever it matters; run compare.seeds with 3 or more. " + family)
    return (f"With {n} seeds the training part of each interval has {n - 1} degrees of freedom (t = "
            f"{critical(n - 1):.2f} where training randomness dominates, against 1.96 where the test "
            f"set does): close to 95% coverage if the seeds' results are roughly normal, at the price of width; "
            f"more seeds narrow it. " + family)


PROTOCOLS = {"modality": "whole modalities missing at random at each test rate, and each one missing on every row",
             "subsets": "only the modalities of each subset available on every row (MMIN, MoMKE)",
             "intra": "each step of every present sequence modality zeroed at each test rate (TFR-Net, LNLN)"}
REGIMES = {"fixed": "every modality dropped at train.missing_rate", "complete": "complete data",
           "lnln": "a rate per row from U(0, 1), redrawn every epoch, a share kept complete (LNLN)"}


def protocol_line(results: dict) -> str:
    """Which test protocol and training regime made the numbers (a compare.json from before both were
    recorded was made with the defaults)."""
    protocol, regime = results.get("protocol", "modality"), results.get("regime", "fixed")
    return (f"Protocol: {protocol} ({PROTOCOLS.get(protocol, '?')}). Training regime: {regime} "
            f"({REGIMES.get(regime, '?')}; upper_bound: complete data).")


def lineage_lines(results: dict) -> list[str]:
    sizes = results["split_sizes"]
    weights = {m: p.get("weights_id", "") for m, p in results["provenance"]["modalities"].items()}
    lines = [
        f"seeds: {', '.join(str(s) for s in results['seeds'])} (n = {len(results['seeds'])} per variant)",
        f"split sizes: train {sizes['train']}, valid {sizes['valid']}, test {sizes['test']}",
        "features: " + "; ".join(f"{m} {results['provenance']['modalities'][m]['feature_set']} ({w})"
                                 for m, w in weights.items()),
        f"spread: {results['method']['spread']}; CI: {results['method']['ci']}, "
        f"{results['method']['resamples']} resamples; correction: {results['method'].get('correction', 'none')}",
        f"manifest sha256: {results['provenance']['manifest_sha256'][:16]}",
    ]
    random = [m for m, w in weights.items() if "random-init" in w]
    if random:
        lines.insert(0, f"WARNING: {', '.join(random)} features come from randomly initialised weights "
                        f"(random-init): these numbers say nothing about pretrained CLIP")
    return lines


def render_markdown(results: dict) -> str:
    t = table_rows(results)
    better = "lower" if t["lower_is_better"] else "higher"
    out = [f"# {results['dataset']}: {t['metric']} ({better} is better), mean ± sd over "
           f"{len(results['seeds'])} seeds, test split", "", protocol_line(results), ""]
    out.append("| variant | " + " | ".join(t["headers"]) + " |")
    out.append("|---|" + "---:|" * len(t["headers"]))
    for v, cells in t["rows"]:
        out.append(f"| {v} | " + " | ".join(f"**{c}**" if bold else c for c, bold in cells) + " |")
    for name, cell in t["reference"]:
        out.append(f"| {name} (reference: trained and tested on complete data) | {cell} |"
                   + " |" * (len(t["headers"]) - 1))
    out += ["", f"Bold: the best variant of each column. {_mean_note(results)}", ""]
    out += every_metric_lines(results)
    ranks = results.get("ranks", {})
    if ranks and max(len(r) for r in ranks.values()) >= 3:
        depth = max(len(r) for r in ranks.values())
        out += [f"Rank by mean {t['metric']} (1 = best; the intervals below say which gaps are real):", ""]
        out += _md_table("rank", t["headers"], [(str(i + 1), [r[i] if i < len(r) else "–"
                                                              for r in (ranks.get(c, []) for c in t["conditions"])])
                                                for i in range(depth)])
        out.append("")
    if t["differences"]:
        sign = "negative" if t["lower_is_better"] else "positive"
        m = results["method"].get("family_size", len(t["headers"]))
        out.append(f"## trml − baseline: {t['metric']}, mean [95% CI, Bonferroni-adjusted over {m} conditions] "
                   f"({sign} favours trml; † the adjusted interval excludes 0)")
        out.append("")
        out += _md_table("trml −", t["headers"], t["differences"])
        out += ["", "Unadjusted 95% CI (each condition on its own, no †):", ""]
        out += _md_table("trml −", t["headers"], t["raw_differences"])
        out += ["", guarantee(results), ""]
    out.append("## Lineage")
    out.append("")
    out += [f"- {line}" for line in lineage_lines(results)]
    return "\n".join(out) + "\n"


def every_metric_lines(results: dict) -> list[str]:
    """Every metric MMSA reports (trml/metrics.py), mean ± sd over seeds, at the protocol's mean condition and
    at the first condition (no simulated missingness, or the first subset); compare.json has every condition."""
    means = results.get("mean_of") or {RATE_MEAN: results.get("rates", [])}
    mean = next(iter(means))
    conds = [c for c in (mean, (means[mean] or [None])[0]) if c in results["conditions"]]
    variants = results["variants"]
    keys = list(next(iter(variants.values()))[mean]) if variants and mean in results["conditions"] else []
    if len(keys) < 2:
        return []
    out = []
    for c in conds:
        out += [f"Every metric at {_header(c)} (mean ± sd over seeds; {', '.join(k for k in keys if k in LOWER_IS_BETTER)}"
                f" lower is better, the rest higher):", ""]
        out += _md_table("variant", keys, [(v, [_mean_sd(by_cond[c][k]) for k in keys])
                                           for v, by_cond in variants.items()])
        out.append("")
    if "acc2_has0" in keys:
        out += ["MMSA's names: acc2_has0 Has0_acc_2, f1_has0 Has0_F1_score, acc2_non0 Non0_acc_2, f1_non0 "
                "Non0_F1_score, acc7 Mult_acc_7, acc5 Mult_acc_5, mae MAE, corr Corr (fractions, not percent).", ""]
    return out


def render_latex(results: dict) -> str:
    """The same table as a booktabs tabular (needs \\usepackage{booktabs})."""
    t = table_rows(results)
    n = len(t["headers"])
    better = "lower" if t["lower_is_better"] else "higher"
    lines = [
        f"% {results['dataset']}: {t['metric']} ({better} is better), mean $\\pm$ sd over {len(results['seeds'])} "
        f"seeds; generated by `trml report --format latex` from reports/{results['dataset']}/compare.json",
        *[f"% {_latex_comment(line)}" for line in lineage_lines(results)],
        "\\begin{tabular}{l" + "c" * n + "}",
        "\\toprule",
        f"\\multicolumn{{{n + 1}}}{{l}}{{{_tex(protocol_line(results))}}} \\\\",
        "Variant & " + " & ".join(_tex(h) for h in t["headers"]) + " \\\\",
        "\\midrule",
    ]
    for v, cells in t["rows"]:
        lines.append(_tex(v) + " & " + " & ".join(_tex_cell(c, bold) for c, bold in cells) + " \\\\")
    if t["reference"]:
        lines.append("\\midrule")
        for name, cell in t["reference"]:
            lines.append(f"{_tex(name)} (complete data) & \\multicolumn{{{n}}}{{l}}{{{_tex_cell(cell, False)}}} \\\\")
    if t["differences"]:
        lines.append("\\midrule")
        lines.append(f"\\multicolumn{{{n + 1}}}{{l}}{{trml $-$ baseline, mean [95\\% CI, Bonferroni-adjusted "
                     f"over {results['method'].get('family_size', n)} conditions]}} \\\\")
        for base, cells in t["differences"]:
            lines.append(f"$-$ {_tex(base)} & " + " & ".join(_tex_cell(c, False) for c in cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_report(reports_dir: Path, dataset: str, fmt: str, out: Path | None) -> Path:
    """`trml report`: render compare.json and write it (default: reports/<dataset>/results.{md,tex})."""
    results = load_results(reports_dir, dataset)
    text = render_latex(results) if fmt == "latex" else render_markdown(results)
    path = out or dataset_dir(reports_dir, dataset) / ("results.tex" if fmt == "latex" else "results.md")
    write_text_atomic(text, path)
    return path


def _header(cond: str) -> str:
    if cond == RATE_MEAN:
        return "mean(r)"
    if cond == SUBSET_MEAN:
        return "mean(subsets)"
    if cond == INTRA_MEAN:
        return "mean(i)"
    return cond


def _fmt(v: float) -> str:
    return f"{v:.{DIGITS}f}".replace("-", "−")


def _mean_sd(s: dict) -> str:
    if s["mean"] is None:
        return "–"
    return _fmt(s["mean"]) if s["sd"] is None else f"{_fmt(s['mean'])} ± {s['sd']:.{DIGITS}f}"


def _md_table(corner: str, headers: list[str], rows: list[tuple[str, list[str]]]) -> list[str]:
    return ([f"| {corner} | " + " | ".join(headers) + " |", "|---|" + "---:|" * len(headers)]
            + [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows])


def _diff(d: dict, key: str, mark: bool) -> str:
    if d["mean"] is None:
        return "–"
    sign = "+" if d["mean"] > 0 else ""
    if not d.get(key):
        return f"{sign}{_fmt(d['mean'])}"
    lo, hi = d[key]
    mark = " †" if mark and (lo > 0 or hi < 0) else ""
    return f"{sign}{_fmt(d['mean'])} [{_fmt(lo)}, {_fmt(hi)}]{mark}"


def _mean_note(results: dict) -> str:
    if results.get("protocol") == "subsets":
        return ("avail_<initials>: only those modalities available on every utterance (t text, v vision, "
                "a audio, f face; on top of natural missingness); mean(subsets): the metric averaged over them.")
    if results.get("protocol") == "intra":
        return ("i<p>: each frame or token of every present sequence modality zeroed with probability p (an "
                "embedding, one vector per utterance, is left as it is); mean(i): the metric averaged over the rates.")
    return ("mean(r): the metric averaged over the test missing rates; r<p>: each modality missing with "
            "probability p; miss_<m>: modality m missing from every utterance.")


def _tex(s: str) -> str:
    return s.replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("%", "\\%").replace("&", "\\&")


def _tex_cell(cell: str, bold: bool) -> str:
    body = cell.replace("−", "-").replace(" ± ", " \\pm ").replace(" †", "^\\dagger")
    if body == "–":
        return "--"
    return f"$\\mathbf{{{body}}}$" if bold else f"${body}$"


def _latex_comment(line: str) -> str:
    return line.replace("%", "\\%")


def show_metrics(metrics_dir: Path, reports_dir: Path) -> str:
    """The headline numbers of every dataset (metrics/*.json) as one line, each followed by its results table
    (reports/<dataset>/results.md): what `trml show-metrics` and `make demo` print."""
    files = sorted(Path(metrics_dir).glob("*.json"))
    if not files:
        raise ReportError(f"no metrics in {metrics_dir}/ yet; run `dvc repro` (or `trml compare`) first")
    out = []
    for f in files:
        headline = json.loads(f.read_text())            # flat: {"mae_r0.0": 0.61, ..., "vs_zf_hi": 0.01}
        out += [f"== {f}", "  " + "  ".join(f"{k} {v:.4f}" if isinstance(v, (int, float)) else f"{k} -"
                                            for k, v in headline.items())]
        table = dataset_dir(reports_dir, f.stem) / "results.md"
        if table.is_file():
            out += ["", table.read_text()]
    return "\n".join(out) + "\n"
