"""The `extract` stage as a Prefect flow: manifest -> shards (cached Prefect tasks) -> one Parquet per feature set.

    data/index/<dataset>.parquet  ->  data/features/<dataset>/<feature_set>.parquet

- A shard is `extract.shard_size.<feature_set>` consecutive manifest rows of one feature set, and one Prefect
  task run (texts are cheap: shards of hundreds; videos are not: tens).
  Shards of all requested feature sets are submitted interleaved, so the runner's workers overlap
  different extractors (an extractor instance runs one shard at a time: mediapipe's landmarker is not
  thread-safe, and two torch forwards on the same cores only contend).
- Runners: ThreadPoolTaskRunner(extract.max_workers) by default; `runner='dask'` submits the shards to an
  existing Dask cluster through prefect-dask (every worker needs this project installed, and the media
  and cache paths must be reachable from it).
- Caching: a shard's cache key hashes exactly what its extractor reads (utterance ids, plus media file
  identity for media feature sets or the text for text feature sets), the extractor's
  config_fingerprint() and the extractor's source code. Results persist under Prefect's local storage
  path (PREFECT_LOCAL_STORAGE_PATH, by default $PREFECT_HOME/storage), so a run in a new process
  recomputes nothing, and changing one extractor's parameters recomputes only that feature set.
- Interrupted runs: a shard's result is committed when its task finishes, so after a SIGKILL the next
  run recomputes only unfinished shards. Prefect treats a record it cannot read (one cut short by the
  kill) as a cache miss. Tables are written with features.store.write_atomic, so an output path only
  ever holds a complete file.
- Same inputs give byte-identical tables: rows are assembled in manifest order, whichever shard finished first.
"""
from __future__ import annotations

from flows import runtime  # noqa: F401  (offline/quiet Prefect settings; must come before `import prefect`)

import hashlib
import inspect
import json
import logging
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
from prefect import flow, task
from prefect.futures import as_completed
from prefect.settings import PREFECT_LOCAL_STORAGE_PATH
from prefect.task_runners import ThreadPoolTaskRunner

from common.device import resolve_device
from common.errors import UserError
from common.files import sha256_file, write_text_atomic
from common.layout import DATA_DIR, features_dir, manifest_path
from features.config import FEATURE_SETS, ExtractConfig
from features.extractors import MediaItem, build_extractor, extractor_class
from features.extractors.base import versions
from features.store import (FeatureRow, ManifestError, ManifestRow, TableInfo, assemble, media_items, read_manifest,
                            rows_to_table, write_atomic)

log = logging.getLogger(__name__)

# Media files up to this size are keyed by a hash of their bytes (so a fresh checkout or `dvc pull`,
# which changes mtimes, still hits the cache); larger ones by size + mtime, to avoid reading
# gigabytes just to compute keys.
CONTENT_HASH_MAX_BYTES = 8 << 20
CACHE_KEY_VERSION = 1                      # bump when the key recipe changes
CACHE_NAMESPACE = "trml-extract"           # sub-folder of Prefect's local storage path
PROGRESS_LOG_EVERY_S = 5.0


class ExtractionError(UserError):
    """Extraction could not produce a complete table; the message names the dataset, set and shard."""


# ---------------------------------------------------------------- cache keys

def media_identity(path: Path) -> str:
    """What identifies a media file's content for caching, without trusting its name."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "absent"
    except OSError as exc:
        return f"unreadable:{type(exc).__name__}"
    if st.st_size <= CONTENT_HASH_MAX_BYTES:
        return f"sha256:{sha256_file(path)}"
    return f"stat:{st.st_size}:{st.st_mtime_ns}"


def code_fingerprint(extractor_cls: type) -> str:
    """Hash of the source of every `features.*` module the extractor class reaches through its imports.

    An edit there invalidates the cache even when nobody bumped extractor_version: DVC re-runs the stage
    on a code change, and a stale cache would then silently hand back the old features.
    """
    files: dict[str, str] = {}
    todo = [sys.modules[cls.__module__] for cls in extractor_cls.__mro__ if cls.__module__ in sys.modules]
    while todo:
        module = todo.pop()
        name = module.__name__
        # Packages are skipped: their attributes grow with every submodule anyone imports later.
        if name in files or not name.startswith("features.") or hasattr(module, "__path__"):
            continue
        files[name] = getattr(module, "__file__", None) or ""
        for value in list(vars(module).values()):
            dep = value if inspect.ismodule(value) else inspect.getmodule(value)
            if dep is not None:
                todo.append(dep)
    digest = hashlib.sha256()
    for name in sorted(files):
        source = Path(files[name]).read_bytes() if files[name] else b""
        digest.update(name.encode() + b"\0" + hashlib.sha256(source).digest())
    return digest.hexdigest()


def shard_cache_key(feature_set: str, fingerprint: str, rows: list[ManifestRow], root: Path,
                    uses_text: bool) -> str:
    """A storage key (also a relative path under the cache folder) for one shard's result."""
    digest = hashlib.sha256(json.dumps([CACHE_KEY_VERSION, feature_set, fingerprint]).encode())
    for row in rows:
        if uses_text:
            entry = [row.utterance_id, row.text]
        else:
            entry = [row.utterance_id, row.media_path,
                     media_identity(root / row.media_path) if row.media_path is not None else None]
        digest.update(json.dumps(entry, ensure_ascii=False).encode() + b"\n")
    return f"{CACHE_NAMESPACE}/{feature_set}/{digest.hexdigest()}"


def cache_dir() -> Path:
    """Where shard results persist: Prefect's local storage path (default $PREFECT_HOME/storage)."""
    return Path(PREFECT_LOCAL_STORAGE_PATH.value()).expanduser().resolve()


# ---------------------------------------------------------------- extractors, once per process

_extractors: dict[tuple[str, str], tuple[str, object, threading.Lock]] = {}
_extractors_lock = threading.Lock()


def loaded_extractor(feature_set: str, cfg: ExtractConfig, device: str):
    """The process's extractor for (feature_set, device), built on first use and rebuilt only when the
    config changes (one instance per set bounds memory in long-lived processes such as Dask workers).

    Only a shard that is computed asks for it: the thread runner's workers share the one build of their
    process (each extractor's lock serialises its calls), and each Dask worker process builds its own once.
    A run whose shards are all cached never builds one."""
    cfg_json = cfg.model_dump_json()
    with _extractors_lock:
        cached = _extractors.get((feature_set, device))
        if cached is None or cached[0] != cfg_json:
            started = time.perf_counter()
            extractor = build_extractor(feature_set, cfg, device=device)
            log.info("%s: extractor ready on %s in %.1f s", feature_set, device, time.perf_counter() - started)
            cached = (cfg_json, extractor, threading.Lock())
            _extractors[(feature_set, device)] = cached
        return cached[1], cached[2]


# ---------------------------------------------------------------- a table's description, without a model

# The libraries whose versions an extractor records (and whose floats they shape): part of the key below.
EXTRACTOR_LIBRARIES = ("torch", "transformers", "sentence-transformers", "open_clip_torch", "av", "librosa",
                       "numpy", "mediapipe")
_identities: dict[tuple[str, str], dict] = {}


def weights_identity(feature_set: str, cfg: ExtractConfig) -> dict:
    """The set's weights, found and checked without building its model (once per process and settings):
    a missing or offline weight fails here, in one line, before any work."""
    key = (feature_set, cfg.model_dump_json())
    if key not in _identities:
        _identities[key] = extractor_class(feature_set).weights_identity(cfg)
    return _identities[key]


def describe_table(feature_set: str, cfg: ExtractConfig, device: str) -> tuple[TableInfo, str]:
    """(the table's metadata, the shards' config fingerprint) for `feature_set`.

    Both come from the built extractor the first time. They are then kept in a small record under the cache
    folder, keyed by everything they depend on: the settings, the device, the weights' identity, the source
    of the extractor's modules and the versions of the libraries. A later run reads the record instead, so
    a run whose shards are all cached loads no model.
    """
    cls = extractor_class(feature_set)
    key = hashlib.sha256(json.dumps(
        [CACHE_KEY_VERSION, feature_set, cfg.model_dump(mode="json"), device, weights_identity(feature_set, cfg),
         code_fingerprint(cls), versions(*EXTRACTOR_LIBRARIES)], sort_keys=True, default=str).encode()).hexdigest()
    record = cache_dir() / CACHE_NAMESPACE / "tables" / f"{feature_set}-{key}.json"
    if record.is_file():
        try:
            saved = json.loads(record.read_text())
            return TableInfo(**saved["info"]), saved["fingerprint"]
        except (ValueError, KeyError, TypeError):       # unreadable: describe it anew, below
            log.warning("%s: ignoring unreadable table description %s", feature_set, record)
    extractor, _ = loaded_extractor(feature_set, cfg, device)
    info = extractor.info()
    fingerprint = hashlib.sha256(f"{extractor.config_fingerprint()}\0{code_fingerprint(cls)}".encode()).hexdigest()
    write_text_atomic(json.dumps({"info": asdict(info), "fingerprint": fingerprint}, default=str), record)
    return info, fingerprint


# ---------------------------------------------------------------- the shard task

def _cache_key_from_parameters(context, parameters: dict) -> str:
    return parameters["cache_key"]  # computed by the flow from the shard's content (shard_cache_key)


def _is_transient(task, task_run, state) -> bool:
    """Retry I/O trouble (a flaky network mount, a timeout), not bugs or bad configuration."""
    try:
        state.result()
    except (OSError, TimeoutError):
        return True
    except BaseException:
        return False
    return False


@task(name="extract-shard", task_run_name="{feature_set}[{shard_index}]",
      cache_key_fn=_cache_key_from_parameters, persist_result=True, cache_result_in_memory=False,
      retries=2, retry_delay_seconds=[1, 5], retry_condition_fn=_is_transient)
def extract_shard(feature_set: str, shard_index: int, cache_key: str, items: list[MediaItem],
                  extract_cfg: ExtractConfig, device: str) -> list[FeatureRow]:
    """Extract one shard. Bad media never raises (it becomes a row status); only I/O errors do."""
    extractor, lock = loaded_extractor(feature_set, extract_cfg, device)
    with lock:
        rows = extractor.extract(items)
    got = [r.utterance_id for r in rows]
    want = [i.utterance_id for i in items]
    if got != want:
        raise ExtractionError(f"{feature_set} shard {shard_index}: extractor returned rows for {got[:3]}... "
                              f"({len(got)} rows) but was given {want[:3]}... ({len(want)} items); "
                              f"an extractor must return one row per item, in order.")
    return rows


# ---------------------------------------------------------------- the flow

@dataclass
class SetPlan:
    feature_set: str
    info: TableInfo
    out: Path
    shards: list[tuple[str, list[MediaItem]]]      # (cache key, items)


@dataclass
class SetReport:
    """What one feature set's run did; `cached` counts task runs Prefect answered from its cache."""
    feature_set: str
    path: Path
    rows: int
    shards: int
    cached: int = 0
    computed: int = 0
    seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)


def plan_feature_set(feature_set: str, root: Path, rows: list[ManifestRow], cfg: ExtractConfig,
                     device: str, out_dir: Path) -> SetPlan:
    info, fingerprint = describe_table(feature_set, cfg, device)
    uses_text = info.modality == "text"
    shards, size = [], cfg.shard_size.of(feature_set)
    for start in range(0, len(rows), size):
        chunk = rows[start:start + size]
        # media_items gives the extractor exactly what its shard cache key covers.
        shards.append((shard_cache_key(feature_set, fingerprint, chunk, root, uses_text),
                       media_items(chunk, root, uses_text)))
    return SetPlan(feature_set, info, out_dir / f"{feature_set}.parquet", shards)


class Progress:
    """Shards done / total and clips per second: a tqdm bar on a terminal, else a log line every few
    seconds; a final line either way."""

    def __init__(self, total_shards: int, total_clips: int):
        self.total_shards, self.total_clips = total_shards, total_clips
        self.shards = self.clips = 0
        self.started = self.last_log = time.perf_counter()
        self.bar = None
        if sys.stderr.isatty() and total_shards:
            from tqdm import tqdm
            self.bar = tqdm(total=total_shards, unit="shard", desc="extract", file=sys.stderr)

    def update(self, clips: int) -> None:
        self.shards += 1
        self.clips += clips
        now = time.perf_counter()
        rate = self.clips / max(now - self.started, 1e-9)
        final = self.shards == self.total_shards
        if self.bar is not None:
            self.bar.set_postfix_str(f"{rate:.1f} clips/s", refresh=False)
            self.bar.update(1)
            if final:
                self.bar.close()
        if final or (self.bar is None and now - self.last_log >= PROGRESS_LOG_EVERY_S):
            self.last_log = now
            log.info("extract: %d/%d shards, %d/%d clip extractions (clips x feature sets), %.1f clips/s",
                     self.shards, self.total_shards, self.clips, self.total_clips, rate)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def portable_details(rows: list[FeatureRow], root: Path) -> list[FeatureRow]:
    """Details name media files relative to the dataset root (as the manifest does), not by absolute path,
    so the same data gives the same table bytes in every clone, and DVC sees the same output."""
    prefix = f"{root}{os.sep}"
    for row in rows:
        if row.detail and prefix in row.detail:
            row.detail = row.detail.replace(prefix, "")
    return rows


@flow(name="trml-extract", validate_parameters=False)
def extract_flow(dataset: str, manifest_path: str, out_dir: str, feature_sets: list[str],
                 extract_cfg: ExtractConfig, device: str) -> list[SetReport]:
    root, rows = read_manifest(Path(manifest_path))
    plans = [plan_feature_set(fs, root, rows, extract_cfg, device, Path(out_dir)) for fs in feature_sets]
    storage = cache_dir()
    shard_task = extract_shard.with_options(result_storage=storage)
    log.info("extract %s: %d utterances, feature sets %s, %d shards (%s); cache %s", dataset, len(rows),
             feature_sets, sum(len(p.shards) for p in plans),
             ", ".join(f"{p.feature_set} <={extract_cfg.shard_size.of(p.feature_set)}" for p in plans), storage)

    # Interleave the sets so that concurrent workers usually hold different extractors.
    owner: dict[object, tuple[int, int]] = {}
    for shard_index in range(max((len(p.shards) for p in plans), default=0)):
        for plan_index, plan in enumerate(plans):
            if shard_index < len(plan.shards):
                key, items = plan.shards[shard_index]
                future = shard_task.submit(plan.feature_set, shard_index, key, items, extract_cfg, device)
                owner[future] = (plan_index, shard_index)

    reports = [SetReport(p.feature_set, p.out, len(rows), len(p.shards)) for p in plans]
    tables: list[dict[int, pa.Table]] = [{} for _ in plans]
    failures: list[str] = []
    started = time.perf_counter()
    for plan in plans:                         # an empty manifest still gets its (empty) tables
        if not plan.shards:
            write_atomic(assemble(plan.info, [], rows, plan.out), plan.out)
    progress = Progress(len(owner), len(rows) * len(plans))
    try:
        for future in as_completed(list(owner)):
            plan_index, shard_index = owner.pop(future)
            plan, report = plans[plan_index], reports[plan_index]
            items = plan.shards[shard_index][1]
            try:
                shard_rows = future.result()
            except Exception as exc:  # after retries: report every failed shard, then fail the run
                failures.append(f"{plan.feature_set} shard {shard_index} (utterances {items[0].utterance_id} .. "
                                f"{items[-1].utterance_id}): {type(exc).__name__}: {exc}")
                progress.update(len(items))
                continue
            cached = future.state.name == "Cached"
            report.cached += cached
            report.computed += not cached
            for status, n in Counter(r.status for r in shard_rows).items():
                report.statuses[status] = report.statuses.get(status, 0) + n
            # Arrow now, so each shard's Python objects are freed as soon as it is done.
            tables[plan_index][shard_index] = rows_to_table(portable_details(shard_rows, root), plan.info)
            del shard_rows
            progress.update(len(items))
            if len(tables[plan_index]) == len(plan.shards):
                table = assemble(plan.info, [tables[plan_index][i] for i in range(len(plan.shards))], rows, plan.out)
                tables[plan_index].clear()
                write_atomic(table, plan.out)
                report.seconds = time.perf_counter() - started
                log.info("%s: wrote %s (%d rows; %d shards computed, %d cached; statuses %s)", plan.feature_set,
                         plan.out, report.rows, report.computed, report.cached, dict(sorted(report.statuses.items())))
    finally:
        progress.close()
    if failures:
        raise ExtractionError(f"extraction of {dataset!r} failed in {len(failures)} shard(s); finished shards are "
                              f"cached, so a re-run resumes:\n  " + "\n  ".join(failures))
    return reports


def make_task_runner(runner: str, dask_address: str | None, max_workers: int):
    if runner == "thread":
        return ThreadPoolTaskRunner(max_workers=max_workers)
    if runner == "dask":
        if not dask_address:
            raise ExtractionError("runner 'dask' needs the address of a running Dask scheduler: pass "
                                  "--dask-address tcp://HOST:8786 or set extract.dask_address in params.yaml "
                                  "(start one with `dask scheduler` and `dask worker tcp://HOST:8786`).")
        from prefect_dask import DaskTaskRunner
        return DaskTaskRunner(address=dask_address)
    raise ExtractionError(f"unknown runner {runner!r}; expected 'thread' or 'dask' (extract.runner in params.yaml)")


def extract_dataset(params, dataset: str, feature_sets: list[str], runner: str | None = None,
                    dask_address: str | None = None, data_dir: Path = DATA_DIR) -> list[SetReport]:
    """Run the flow for `dataset`'s manifest under `data_dir` and report what each feature set did."""
    unknown = [fs for fs in feature_sets if fs not in FEATURE_SETS]
    if unknown or not feature_sets:
        raise ExtractionError(f"feature sets {unknown or feature_sets!r} not known; choose from {list(FEATURE_SETS)}")
    feature_sets = list(dict.fromkeys(feature_sets))
    if dataset in params.mmsa_pickles:
        params.dataset(dataset)                # refuses it, with the reason (no raw media)
    cfg: ExtractConfig = params.extract
    device = resolve_device(cfg.device, "extract.device")   # a settings error first, before any data is looked for
    task_runner = make_task_runner(runner or cfg.runner, dask_address or cfg.dask_address, cfg.max_workers)
    # The dataset needs no params entry: its manifest (from `trml index`) records the raw root and layout.
    manifest = manifest_path(data_dir, dataset)
    if not manifest.is_file():
        how = f"--dataset {dataset}" if dataset in params.datasets else f"--layout folder --root DIR --dataset {dataset}"
        raise ManifestError(f"{manifest}: manifest not found; run `trml index {how}` first"
                            + (f" (with --data-dir {data_dir})" if Path(data_dir) != DATA_DIR else ""))
    read_manifest(manifest)  # fail before the Prefect API starts, with the fix in the message
    for feature_set in feature_sets:
        # Weights too: a WeightsError is one line in seconds, before the API's start-up, and no model is
        # built for it (the flow builds one only for a shard it computes).
        weights_identity(feature_set, cfg)
    run = extract_flow.with_options(task_runner=task_runner, flow_run_name=f"extract-{dataset}")
    return run(dataset=dataset, manifest_path=str(manifest),
               out_dir=str(features_dir(data_dir, dataset)), feature_sets=feature_sets,
               extract_cfg=cfg, device=device)


def run_extraction(params, dataset: str, feature_sets: list[str], runner: str | None = None,
                   dask_address: str | None = None) -> list[Path]:
    """`trml extract`: write data/features/<dataset>/<feature_set>.parquet for each set; return the paths."""
    return [report.path for report in extract_dataset(params, dataset, feature_sets, runner, dask_address)]
