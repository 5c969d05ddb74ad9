"""`trml bench`: extraction throughput, overhead against the bare model, and peak memory of `trml extract --all`.

1. Throughput and overhead, per feature set, on the default sample benchmark (params `sample`): clips/s,
   frames/s and the ratio of end-to-end `extract()` time to the bare model forward on the same inputs,
   both measured in the same run (features.bench).
2. Memory, per sample size (default: the sample size and 10 times it): a fresh sample is generated and
   indexed, then `trml extract --all` runs in a subprocess with an empty shard cache, and its peak RSS is
   read from the kernel (wait4's ru_maxrss: the largest of the process and the children it reaped).
   The peak summed over its live process tree (it includes Prefect's temporary API server) is polled too.
   Shards stream through the flow, so the peak should stay flat as the number of clips grows.
3. Text at dataset scale (`python -m flows.bench texts`, run_text_bench): `trml extract` of one text feature
   set on N generated sentences (a text-only MMSA dataset, 22,800 by default: CMU-MOSEI's size), in a
   subprocess with an empty shard cache, against the bare model on the same texts, before and after it
   in the same run.

4. The fixed cost (`python -m flows.bench noop`, run_noop_bench): a `trml extract` with nothing to compute
   against importing the packages it needs, alternating, in the same run.

Everything is written to a temporary folder that is removed afterwards.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from common.layout import manifest_path

log = logging.getLogger(__name__)

RSS_POLL_S = 0.2
MEMORY_DATASET = "bench"
MOSEI_TEXTS = 22_800          # about CMU-MOSEI's 22,788 transcripts
FACE_RATE_CLIPS = 48          # clips of 2 s at 25 fps for the face at that rate: 2,400 frames


def run_bench(params, sizes: list[int] | None, feature_sets: list[str] | None, out: Path | None) -> dict:
    from features.bench import FACE_RATE_FPS, bench_feature_set, face_at_rate, format_result
    from common.device import resolve_device

    sizes = sizes or [params.sample.size, 10 * params.sample.size]
    feature_sets = list(feature_sets or params.feature_sets)
    device = resolve_device(params.extract.device, "extract.device")
    report: dict = {"machine": machine_info(device), "sample": params.sample.model_dump(mode="json"),
                    "feature_sets": [], "memory": []}
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="trml-bench-") as tmp:
        tmp = Path(tmp)
        manifest = make_dataset(params, params.sample.size, tmp / f"size-{params.sample.size}")
        print(f"== throughput on the sample benchmark ({params.sample.size} clips, device {device})", flush=True)
        for fs in feature_sets:
            try:
                result = bench_feature_set(fs, items_for(fs, manifest), params.extract, device=device)
            except Exception as exc:  # one broken benchmark must not cost the others (and the memory runs)
                log.exception("bench %s failed", fs)
                errors.append(f"{fs}: {type(exc).__name__}: {exc}")
                report["feature_sets"].append({"feature_set": fs, "error": errors[-1]})
                continue
            report["feature_sets"].append(result.to_dict())
            print(format_result(result), flush=True)
        if "face_mediapipe" in feature_sets:
            # The face at MMSA-FET's 25 fps, on clips recorded at that rate (the sample's own are 10 fps).
            label = f"face_mediapipe@{FACE_RATE_FPS:g}fps"
            try:
                rated = params.model_copy(update={"sample": params.sample.model_copy(update={"fps": int(FACE_RATE_FPS)})})
                rate_manifest = make_dataset(rated, min(params.sample.size, FACE_RATE_CLIPS), tmp / "face-rate")
                result = bench_feature_set("face_mediapipe", items_for("face_mediapipe", rate_manifest),
                                           face_at_rate(params.extract), device=device, label=label)
            except Exception as exc:
                log.exception("bench %s failed", label)
                errors.append(f"{label}: {type(exc).__name__}: {exc}")
                report["feature_sets"].append({"feature_set": label, "error": errors[-1]})
            else:
                report["feature_sets"].append(result.to_dict())
                print(format_result(result), flush=True)
        print("== peak memory of `trml extract --all` (fresh shard cache)", flush=True)
        for size in sizes:
            work = tmp / f"size-{size}"
            if not (manifest_path(work / "data", MEMORY_DATASET)).is_file():
                make_dataset(params, size, work)
            try:
                run = measure_extract(params, work, feature_sets)
            except Exception as exc:
                errors.append(f"extract --all on {size} clips: {exc}")
                report["memory"].append({"size": size, "error": errors[-1]})
                print(f"{size:6d} clips  FAILED: {str(exc)[-2000:]}", flush=True)
                continue
            report["memory"].append({"size": size, **run})
            print(format_memory(run, size), flush=True)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    if errors:
        raise RuntimeError("benchmarks failed (the other results were reported):\n  " + "\n  ".join(errors))
    return report


def make_dataset(params, size: int, work: Path) -> Path:
    """Generate a sample of `size` clips under work/raw and index it; return the manifest path."""
    from features.adapters import index_dataset
    from features.config import DatasetConfig
    from features.sample import generate_sample

    started = time.perf_counter()
    generate_sample(work / "raw", params.sample.model_copy(update={"size": size}))
    manifest = manifest_path(work / "data", MEMORY_DATASET)
    index_dataset(DatasetConfig(name=MEMORY_DATASET, layout="mmsa", root=work / "raw"), manifest)
    log.info("bench: sample of %d clips ready in %.0f s", size, time.perf_counter() - started)
    return manifest


def make_text_dataset(n_texts: int, work: Path, seed: int = 0) -> Path:
    """n generated review sentences as a text-only MMSA dataset under work/raw (label.csv, no Raw/ media),
    indexed; return the manifest path."""
    import csv

    import numpy as np

    from features.adapters import index_dataset
    from features.config import DatasetConfig
    from features.sample import LABEL_COLUMNS, _sentence

    rng = np.random.default_rng(seed)
    raw = work / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    with open(raw / "label.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(LABEL_COLUMNS)
        for i in range(n_texts):
            label = round(float(rng.uniform(-3, 3)), 1)
            split = "train" if i % 10 < 7 else "valid" if i % 10 < 9 else "test"
            writer.writerow([f"v{i // 20:05d}", f"{i % 20}", _sentence(label, rng), label, label, label, label,
                             "Positive" if label > 0 else "Negative" if label < 0 else "Neutral", split])
    manifest = manifest_path(work / "data", MEMORY_DATASET)
    index_dataset(DatasetConfig(name=MEMORY_DATASET, layout="mmsa", root=raw), manifest)
    return manifest


PREFECT_APIS = ("temporary", "shared")      # Prefect's own temporary server per process | one server, reused


def run_text_bench(params, n_texts: int = MOSEI_TEXTS, feature_set: str = "text_minilm",
                   shard_sizes: list[int] | None = None, out: Path | None = None,
                   prefect_apis: tuple[str, ...] = PREFECT_APIS) -> dict:
    """`trml extract --feature-set <feature_set>` on n generated texts against the bare model, in one run.

    The extraction runs once per shard size (default: params extract.shard_size) and Prefect API, each with
    an empty shard cache: "temporary" is Prefect's own temporary server, started by the extraction process
    (no PREFECT_API_URL); "shared" is one `prefect server start` that every extraction reuses, as
    `trml with-prefect` or a user's own server gives (started before the timing: it is up already). The
    bare model (the extractor's bare_forward on all texts, tokenised beforehand, in one call: the fewest,
    fullest batches) runs just before and just after them; ratios use the faster of the two. An extraction
    is everything a user waits for: process start, imports, the Prefect API, the model, the shards,
    writing the table.
    """
    from contextlib import ExitStack

    from flows.serve import temporary_prefect_server
    from common.device import resolve_device
    from features.extractors import build_extractor

    shard_sizes = shard_sizes or [params.extract.shard_size.of(feature_set)]
    device = resolve_device(params.extract.device, "extract.device")
    with tempfile.TemporaryDirectory(prefix="trml-bench-text-") as tmp:
        work = Path(tmp)
        manifest = make_text_dataset(n_texts, work, seed=params.sample.seed)
        extractor = build_extractor(feature_set, params.extract, device=device)
        with ExitStack() as stack:
            stack.callback(extractor.close)
            shared_url = stack.enter_context(temporary_prefect_server()) if "shared" in prefect_apis else None
            inputs = extractor.model_inputs(items_for(feature_set, manifest))
            extractor.bare_forward(extractor.model_inputs(items_for(feature_set, manifest)[:256]))  # warm-up
            bare = [_timed(extractor.bare_forward, inputs)]
            print(f"{feature_set}: bare model on {n_texts} texts: {bare[0]:.1f} s", flush=True)
            runs = []
            for size in shard_sizes:
                sizes = params.extract.shard_size.model_copy(update={feature_set: size})
                sized = params.model_copy(update={"extract": params.extract.model_copy(update={"shard_size": sizes})})
                for api in prefect_apis:
                    run = measure_extract(sized, work / f"shards-{size}-{api}", [feature_set], raw=work / "raw",
                                          api_url=shared_url if api == "shared" else None)
                    runs.append({"shard_size": size, "prefect_api": api, **run})
                    print(f"{feature_set}: `trml extract` in shards of {size}, {api} Prefect API: "
                          f"{run['wall_s']:.1f} s", flush=True)
            bare.append(_timed(extractor.bare_forward, inputs))
    for run in runs:
        run["ratio"] = run["wall_s"] / min(bare)
    report = {"machine": machine_info(device), "feature_set": feature_set, "texts": n_texts,
              "embedded": inputs.items, "bare_s": bare, "extract": runs}
    print(f"{feature_set}, {n_texts} texts: bare model {bare[0]:.1f} s / {bare[1]:.1f} s (before / after); "
          + "; ".join(f"shards of {r['shard_size']}, {r['prefect_api']} API: {r['wall_s']:.1f} s, ratio "
                      f"{r['ratio']:.2f}" for r in runs), flush=True)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
    return report


NOOP_TEXTS = 64

# Run in the extraction's work folder: the no-op extraction in-process, then the top-level packages it
# imported, outside the standard library and this project: "the packages it needs".
_LIST_PACKAGES = """
import importlib.util, sys
from flows.cli import main
assert main(sys.argv[1:]) == 0
own = {"common", "features", "flows", "trml", "tests"}
names = sorted({m.split(".")[0] for m in list(sys.modules)} - set(sys.stdlib_module_names) - own)
# Only what an import statement can load (not the runtime modules some extensions register, like cython_runtime).
print("packages:", " ".join(n for n in names if not n.startswith("_") and getattr(sys.modules.get(n), "__spec__", None)))
"""


def run_noop_bench(params, rounds: int = 5, prefect_apis: tuple[str, ...] = PREFECT_APIS,
                   out: Path | None = None) -> dict:
    """The fixed cost of `trml extract`: a run with nothing to compute (every shard cached) of text_minilm on
    64 texts, against importing the packages that run imports, in one run.

    The no-op is `trml extract --feature-set text_minilm` after one extraction of the same texts (same cache
    folder). Its packages are listed by running it once in-process and reading sys.modules; the import cost
    is `python -c "import <those packages>"` in a fresh process. Both alternate, `rounds` times each; ratios
    use the medians. Per Prefect API (see run_text_bench): "temporary" starts Prefect's own temporary
    server inside each run, "shared" reuses one that is already up.
    """
    import statistics
    from contextlib import ExitStack

    from flows.serve import temporary_prefect_server

    feature_set = "text_minilm"
    with tempfile.TemporaryDirectory(prefix="trml-bench-noop-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        make_text_dataset(NOOP_TEXTS, work, seed=params.sample.seed)
        shared_url = stack.enter_context(temporary_prefect_server()) if "shared" in prefect_apis else None
        measure_extract(params, work, [feature_set], api_url=shared_url)       # fills the shard cache
        env = {**os.environ, "PREFECT_LOCAL_STORAGE_PATH": str(work / "cache"), "PREFECT_HOME": str(work / "prefect")}
        argv = ["--params", "params.yaml", "extract", "--dataset", MEMORY_DATASET, "--all"]
        proc = subprocess.run([sys.executable, "-c", _LIST_PACKAGES, *argv], cwd=work, env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"listing the packages of a no-op `trml extract` failed:\n{proc.stderr[-3000:]}")
        listed = proc.stdout.split("packages:")[-1].split()
        imports = [sys.executable, "-c", "import " + ", ".join(listed)]
        times: dict[str, list[float]] = {"imports": [], **{api: [] for api in prefect_apis}}
        for _ in range(rounds):
            times["imports"].append(_timed(subprocess.run, imports, check=True, capture_output=True))
            for api in prefect_apis:
                times[api].append(measure_extract(params, work, [feature_set],
                                                  api_url=shared_url if api == "shared" else None)["wall_s"])
    median = {k: statistics.median(v) for k, v in times.items()}
    report = {"machine": machine_info("cpu"), "texts": NOOP_TEXTS, "feature_set": feature_set, "rounds": rounds,
              "packages": listed, "seconds": times, "median_s": median,
              "ratio": {api: median[api] / median["imports"] for api in prefect_apis}}
    print(f"no-op `trml extract --feature-set {feature_set}` ({NOOP_TEXTS} texts, every shard cached), medians of "
          f"{rounds}: imports of its {len(listed)} packages {median['imports']:.1f} s; "
          + "; ".join(f"{api} Prefect API {median[api]:.1f} s, ratio {report['ratio'][api]:.2f}"
                      for api in prefect_apis), flush=True)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _timed(fn, *args, **kwargs) -> float:
    started = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - started


def items_for(feature_set: str, manifest: Path) -> list:
    """The MediaItems the extraction flow would give this feature set."""
    from features.extractors import extractor_class
    from features.store import media_items, read_manifest

    root, rows = read_manifest(manifest)
    return media_items(rows, root, uses_text=extractor_class(feature_set).modality == "text")


def measure_extract(params, work: Path, feature_sets: list[str], raw: Path | None = None,
                    api_url: str | None = None) -> dict:
    """Run `trml extract` of `feature_sets` on work/data in a subprocess; its wall time and peak RSS.
    The raw dataset is work/raw unless given; the manifest is indexed there when absent. `api_url`: a
    running Prefect server to use (PREFECT_API_URL); None: the process starts Prefect's temporary one."""
    raw = raw or work / "raw"
    manifest = manifest_path(work / "data", MEMORY_DATASET)
    if not manifest.is_file():
        from features.adapters import index_dataset
        from features.config import DatasetConfig
        index_dataset(DatasetConfig(name=MEMORY_DATASET, layout="mmsa", root=raw), manifest)
    spec = params.model_dump(mode="json")
    spec["datasets"] = {MEMORY_DATASET: {"layout": "mmsa", "root": str(raw)}}
    spec["feature_sets"] = feature_sets
    for ds in spec["datasets"].values():
        ds.pop("name", None)
    (work / "params.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update({"PREFECT_LOCAL_STORAGE_PATH": str(work / "cache"),  # empty cache: measure real work
                "PREFECT_HOME": str(work / "prefect")})
    if api_url:
        env["PREFECT_API_URL"] = api_url
    cmd = [sys.executable, "-m", "flows.cli", "--params", "params.yaml", "extract", "--dataset", MEMORY_DATASET,
           "--all"]
    started = time.perf_counter()
    with open(work / "extract.log", "wb") as logfile:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=logfile, stderr=subprocess.STDOUT)
    tree_peak = TreePeak(proc.pid)
    tree_peak.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    tree_peak.stop()
    if proc.returncode != 0:
        tail = (work / "extract.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"`{' '.join(cmd)}` failed with exit code {proc.returncode}:\n{tail}")
    return {"feature_sets": feature_sets, "wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024,
            "peak_tree_rss_bytes": tree_peak.peak, "command": " ".join(cmd[1:])}


class TreePeak(threading.Thread):
    """Polls the summed RSS of a process and its descendants; keeps the largest value seen."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self._stop_event = pid, 0, threading.Event()

    def run(self) -> None:
        import psutil
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop_event.is_set():
            total = 0
            try:
                for proc in [root, *root.children(recursive=True)]:
                    try:
                        total += proc.memory_info().rss
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        pass
            except psutil.NoSuchProcess:
                return
            self.peak = max(self.peak, total)
            self._stop_event.wait(RSS_POLL_S)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


def format_memory(run: dict, size: int) -> str:
    mib = 1 << 20
    return (f"{size:6d} clips  {run['wall_s']:8.1f} s  {size / run['wall_s']:7.2f} clips/s  "
            f"peak RSS {run['peak_rss_bytes'] / mib:7.0f} MiB  (process tree {run['peak_tree_rss_bytes'] / mib:.0f} MiB)")


def machine_info(device: str) -> dict:
    import psutil
    import torch
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "cpu": _cpu_model(), "memory_bytes": psutil.virtual_memory().total, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "device": device}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> None:
    """`python -m flows.bench texts [--n N] [--feature-set S] [--shard-size K] [--out FILE]`, or
    `python -m flows.bench noop [--rounds R] [--out FILE]`."""
    import argparse

    from flows.params import load_params

    parser = argparse.ArgumentParser(prog="python -m flows.bench", description=run_text_bench.__doc__.split("\n")[0])
    parser.add_argument("what", choices=["texts", "noop"])
    parser.add_argument("--rounds", type=int, default=5, help="noop: timed runs of each command")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--n", type=int, default=MOSEI_TEXTS, help="number of generated texts")
    parser.add_argument("--feature-set", default="text_minilm", choices=["text_minilm", "text_clip"])
    parser.add_argument("--shard-size", type=int, nargs="+", default=None,
                        help="one extraction per size (default: params extract.shard_size)")
    parser.add_argument("--prefect-api", nargs="+", choices=PREFECT_APIS, default=list(PREFECT_APIS),
                        help="temporary: each extraction starts Prefect's temporary server; shared: one server "
                             "reused by every extraction, as `trml with-prefect` gives (default: both)")
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.what == "noop":
        run_noop_bench(load_params(args.params), args.rounds, tuple(args.prefect_api),
                       Path(args.out) if args.out else None)
        return
    run_text_bench(load_params(args.params), args.n, args.feature_set, args.shard_size,
                   Path(args.out) if args.out else None, tuple(args.prefect_api))


if __name__ == "__main__":
    main()
