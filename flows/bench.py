"""`trml bench`: extraction throughput, overhead against the bare model, and peak memory of `trml extract --all`.

1. Throughput and overhead, per feature set, on the default sample benchmark (params `sample`): clips/s,
   frames/s and the ratio of end-to-end `extract()` time to the bare model forward on the same inputs,
   both measured in the same run (features.bench).
2. Memory, per sample size (default: the sample size and 10 times it): a fresh sample is generated and
   indexed, then `trml extract --all` runs in a subprocess with an empty shard cache, and its peak RSS is
   read from the kernel (wait4's ru_maxrss: the largest of the process and the children it reaped).
   The peak summed over its live process tree (it includes Prefect's temporary API server) is polled too.
   Shards stream through the flow, so the peak should stay flat as the number of clips grows.

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

log = logging.getLogger(__name__)

RSS_POLL_S = 0.2
MEMORY_DATASET = "bench"


def run_bench(params, sizes: list[int] | None, feature_sets: list[str] | None, out: Path | None) -> dict:
    from features.bench import bench_feature_set, format_result
    from features.extractors import resolve_device

    sizes = sizes or [params.sample.size, 10 * params.sample.size]
    feature_sets = list(feature_sets or params.feature_sets)
    device = resolve_device(params.extract.device)
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
        print("== peak memory of `trml extract --all` (fresh shard cache)", flush=True)
        for size in sizes:
            work = tmp / f"size-{size}"
            if not (work / "data" / "index" / f"{MEMORY_DATASET}.parquet").is_file():
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
    manifest = work / "data" / "index" / f"{MEMORY_DATASET}.parquet"
    index_dataset(DatasetConfig(name=MEMORY_DATASET, layout="mmsa", root=work / "raw"), manifest)
    log.info("bench: sample of %d clips ready in %.0f s", size, time.perf_counter() - started)
    return manifest


def items_for(feature_set: str, manifest: Path) -> list:
    """The MediaItems the extraction flow would give this feature set."""
    from features.extractors import extractor_class
    from features.store import media_items, read_manifest

    root, rows = read_manifest(manifest)
    return media_items(rows, root, uses_text=extractor_class(feature_set).modality == "text")


def measure_extract(params, work: Path, feature_sets: list[str]) -> dict:
    """Run `trml extract --all` on work/data in a subprocess; its wall time and peak RSS."""
    spec = params.model_dump(mode="json")
    spec["datasets"] = {MEMORY_DATASET: {"layout": "mmsa", "root": str(work / "raw")}}
    spec["feature_sets"] = feature_sets
    for ds in spec["datasets"].values():
        ds.pop("name", None)
    (work / "params.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {**os.environ, "PREFECT_LOCAL_STORAGE_PATH": str(work / "cache"),  # empty cache: measure real work
           "PREFECT_HOME": str(work / "prefect")}
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
