"""`trml serve`: a Prefect deployment that indexes a raw folder of videos and extracts its features on a cron.

Each scheduled run re-indexes the folder (features.adapters, folder layout) into
data/index/<dataset>.parquet and runs the extraction flow, whose shard cache makes a run over an
unchanged folder nearly free; new clips cost only their own shards (and the shards after them in
sorted order, since shards are consecutive manifest rows).

Where the API comes from:
- PREFECT_API_URL set (e.g. `prefect server start --host 127.0.0.1` in another terminal, then
  `export PREFECT_API_URL=http://127.0.0.1:4200/api`): the deployment is registered there, and its
  scheduler creates the runs.
- PREFECT_API_URL unset: Prefect's temporary in-process API runs no scheduler service (its runner warns
  "Cannot schedule flows on an ephemeral server"), so cron would never fire. serve() therefore starts a
  temporary local Prefect server on a free loopback port (state under PREFECT_HOME, UI included) for its
  own lifetime, and stops it on exit.
"""
from __future__ import annotations

from flows import runtime  # noqa: F401  (offline/quiet Prefect settings; must come before `import prefect`)

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
from prefect import flow
from prefect import serve as prefect_serve
from prefect.client.schemas.schedules import CronSchedule
from prefect.deployments.runner import EntrypointType
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

from common.errors import UserError
from features.config import FEATURE_SETS, DatasetConfig

log = logging.getLogger(__name__)

SERVER_START_TIMEOUT_S = 180.0


@flow(name="trml-serve-extract", validate_parameters=False)
def index_and_extract(params: dict, root: str, dataset: str, feature_sets: list[str]) -> list[str]:
    """One scheduled run: index the folder, then extract every requested feature set."""
    from features.adapters import index_dataset
    from flows.extract import run_extraction
    from flows.params import Params

    # A scheduled run is a fresh process whose root logger Prefect set to WARNING: keep our progress lines.
    for name in ("flows", "features"):
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.INFO)
    p = Params.model_validate(params)
    ds = folder_dataset(p, root, dataset)
    summary = index_dataset(ds, Path("data/index") / f"{dataset}.parquet")
    log.info("serve %s: indexed %d clips under %s", dataset, summary["rows"], root)
    return [str(path) for path in run_extraction(p, dataset, feature_sets)]


def folder_dataset(params, root: str | Path, dataset: str) -> DatasetConfig:
    """The folder-layout config of the served dataset; a params.yaml folder entry of that name lends its
    task and labels CSV."""
    known = params.datasets.get(dataset)
    base = known.model_dump() if known is not None and known.layout == "folder" else {}
    base.update(name=dataset, layout="folder", root=Path(root))
    return DatasetConfig.model_validate(base)


def serve(params, root: Path, dataset: str, cron: str, feature_sets: list[str] | None) -> None:
    """Register the deployment `trml-serve-extract/extract-<dataset>` on `cron` and run its flows until
    interrupted (Ctrl-C)."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise UserError(f"--root {root} is not a folder of videos")
    feature_sets = list(feature_sets or params.feature_sets)
    unknown = [fs for fs in feature_sets if fs not in FEATURE_SETS]
    if unknown:
        raise UserError(f"unknown feature set(s) {unknown}; choose from {list(FEATURE_SETS)}")
    folder_dataset(params, root, dataset)      # validate the name now, not at 3 a.m.
    try:
        CronSchedule(cron=cron)
    except ValueError as exc:
        raise UserError(f"--cron {cron!r} is not a valid cron expression: {exc}") from None

    with ExitStack() as stack:
        api_url = PREFECT_API_URL.value()
        if not api_url:
            api_url = stack.enter_context(temporary_prefect_server())
            # The flow-run subprocesses the runner starts inherit the environment.
            os.environ["PREFECT_API_URL"] = api_url
            stack.enter_context(temporary_settings(updates={PREFECT_API_URL: api_url}))
        log.info("serve %s: indexing and extracting %s on cron %r via %s", dataset, feature_sets, cron, api_url)
        deployment = index_and_extract.to_deployment(
            name=f"extract-{dataset}", cron=cron,
            parameters={"params": params.model_dump(mode="json"), "root": str(root), "dataset": dataset,
                        "feature_sets": feature_sets},
            # flows is an installed package: runs import it by module path, from any working directory.
            entrypoint_type=EntrypointType.MODULE_PATH,
            description=f"Index {root} (folder layout) and extract {', '.join(feature_sets)} on cron {cron!r}.")
        prefect_serve(deployment, limit=1)  # one run at a time: a slow run never overlaps the next


def run_with_server(command: list[str]) -> int:
    """Run `command` with one Prefect API for every flow it starts: the server at PREFECT_API_URL when one
    is set, else a temporary `prefect server start` for the command's duration. Without it, each process
    that runs a flow starts (and stops) Prefect's own temporary server, several seconds each: the demo's
    `dvc repro` runs five extraction processes. Returns the command's exit code."""
    if not command:
        raise UserError("give the command to run, e.g. `trml with-prefect -- dvc repro`")
    if shutil.which(command[0]) is None:      # before a server is started for nothing
        raise UserError(f"{command[0]}: command not found (trml with-prefect runs it with one Prefect server)")
    with ExitStack() as stack:
        api_url = os.environ.get("PREFECT_API_URL") or stack.enter_context(temporary_prefect_server())
        return subprocess.run(command, env={**os.environ, "PREFECT_API_URL": api_url}).returncode


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def temporary_prefect_server(port: int | None = None, timeout_s: float = SERVER_START_TIMEOUT_S):
    """`prefect server start` on loopback for the duration of the block; yields its API URL."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/api"
    log_path = Path(PREFECT_HOME.value()).expanduser() / f"server-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    with open(log_path, "wb") as server_log:
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, stdout=server_log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_for_api(url, timeout_s, proc, log_path)
        log.info("started a temporary Prefect server at %s (dashboard http://127.0.0.1:%d; log %s)",
                 url, port, log_path)
        yield url
    finally:
        stop_process_group(proc)


def wait_for_api(url: str, timeout_s: float, proc: subprocess.Popen | None = None,
                 log_path: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path else ""
            raise RuntimeError(f"the Prefect server exited with code {proc.returncode} before answering at "
                               f"{url}; its log ({log_path}) ends with:\n{tail}")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"no Prefect API at {url} after {timeout_s:.0f} s"
                       + (f"; see {log_path}" if log_path else ""))


def stop_process_group(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM the process group started with start_new_session=True, then SIGKILL what is left."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace_s)
    except ProcessLookupError:
        pass
