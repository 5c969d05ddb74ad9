"""`trml serve`: a cron-scheduled run fires and extracts a folder of videos, against a real
`prefect server start` on loopback (PREFECT_API_URL set) and with no API configured at all."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
import yaml

from common.errors import UserError
from flows.params import Params
from flows.serve import free_port, serve, stop_process_group, wait_for_api
from tests.conftest import ROOT
from tests.test_flows_extract import sample  # noqa: F401  (the module-scoped sample fixture)

SETS = ["text_minilm", "audio_librosa"]
FIRE_TIMEOUT_S = 300        # the next minute boundary, the runner's poll, then the run itself


@pytest.fixture
def served_folder(tmp_path, sample) -> dict:  # noqa: F811
    """A folder of someone's own videos (with transcripts, no labels) and a project to serve it from."""
    videos = tmp_path / "videos"
    videos.mkdir()
    clips = sorted((sample["raw"] / "Raw").glob("*/*.mp4"))[2:5]
    for i, clip in enumerate(clips):
        shutil.copy(clip, videos / f"talk{i}.mp4")
        (videos / f"talk{i}.txt").write_text(f"this is a wonderful clip number {i}")
    project = tmp_path / "project"
    project.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["extract"].update(device="cpu", shard_size=2)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "serve-home"), "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    return {"videos": videos, "project": project, "env": env, "tmp": tmp_path}


def start_serve(folder: dict, env: dict) -> tuple[subprocess.Popen, Path]:
    log_path = folder["tmp"] / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--root", str(folder["videos"]),
                                 "--dataset", "mine", "--cron", "* * * * *", "--feature-set", *SETS],
                                cwd=folder["project"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc, log_path


def wait_for_tables(folder: dict, proc: subprocess.Popen, log_path: Path) -> None:
    out = folder["project"] / "data" / "features" / "mine"
    deadline = time.monotonic() + FIRE_TIMEOUT_S
    while time.monotonic() < deadline:
        if all((out / f"{fs}.parquet").is_file() for fs in SETS):
            break
        assert proc.poll() is None, f"trml serve exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}"
        time.sleep(1)
    else:
        pytest.fail(f"no scheduled run wrote features within {FIRE_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")
    for fs in SETS:
        table = pq.read_table(out / f"{fs}.parquet")
        assert sorted(table.column("utterance_id").to_pylist()) == ["talk0", "talk1", "talk2"]
        assert set(table.column("status").to_pylist()) == {"ok"}


def completed_scheduled_runs(api_url: str) -> list[dict]:
    body = {"flows": {"name": {"any_": ["trml-serve-extract"]}},
            "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}
    runs = httpx.post(f"{api_url}/flow_runs/filter", json=body, timeout=10).json()
    return [r for r in runs if r.get("auto_scheduled")]


@pytest.mark.slow
def test_serve_against_a_real_prefect_server(served_folder):
    env = dict(served_folder["env"], PREFECT_HOME=str(served_folder["tmp"] / "server-home"))
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    server_log = served_folder["tmp"] / "server.log"
    with open(server_log, "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                   "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    serve = None
    try:
        wait_for_api(api_url, 180, server, server_log)
        serve, serve_log = start_serve(served_folder, dict(served_folder["env"], PREFECT_API_URL=api_url))
        wait_for_tables(served_folder, serve, serve_log)
        deadline = time.monotonic() + 60       # the run's final state lands just after its files
        while not completed_scheduled_runs(api_url) and time.monotonic() < deadline:
            time.sleep(1)
        assert completed_scheduled_runs(api_url), "the server shows no completed scheduled run"
    finally:
        if serve is not None:
            stop_process_group(serve)
        stop_process_group(server)


@pytest.mark.slow
def test_serve_without_an_api_url_starts_its_own_local_server(served_folder):
    serve, serve_log = start_serve(served_folder, served_folder["env"])
    try:
        wait_for_tables(served_folder, serve, serve_log)
        match = re.search(r"started a temporary Prefect server at (\S+)", serve_log.read_text())
        assert match, serve_log.read_text()[-3000:]
        deadline = time.monotonic() + 60
        while not completed_scheduled_runs(match.group(1)) and time.monotonic() < deadline:
            time.sleep(1)
        assert completed_scheduled_runs(match.group(1))
    finally:
        stop_process_group(serve)
    # serve stopped the server it started.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{match.group(1)}/health", timeout=2)


def test_serve_checks_its_arguments_before_starting_anything(tmp_path):
    params = Params.model_validate({"datasets": {"sample": {"layout": "mmsa"}}})
    with pytest.raises(UserError, match="is not a folder of videos"):
        serve(params, tmp_path / "nowhere", "mine", "* * * * *", None)
    with pytest.raises(UserError, match="not a valid cron expression"):
        serve(params, tmp_path, "mine", "every minute please", None)
    with pytest.raises(UserError, match="unknown feature set"):
        serve(params, tmp_path, "mine", "* * * * *", ["text_bert"])


PRINT_API_URL = "import os, httpx; url = os.environ['PREFECT_API_URL']; print(url); " \
                "print(httpx.get(url + '/health', timeout=5).status_code)"


def test_with_prefect_reuses_the_server_in_prefect_api_url(monkeypatch, capfd):
    """PREFECT_API_URL already set: the command runs against that server and no other is started."""
    from flows import serve as serve_module
    from flows.serve import run_with_server

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    monkeypatch.setattr(serve_module, "temporary_prefect_server", lambda *a, **k: pytest.fail("started a server"))
    assert run_with_server([sys.executable, "-c", "import os, sys; print(os.environ['PREFECT_API_URL']); "
                                                  "sys.exit(3)"]) == 3          # the command's own exit code
    assert capfd.readouterr().out.strip() == "http://127.0.0.1:9/api"
    with pytest.raises(UserError, match="no-such-command-here: command not found"):
        run_with_server(["no-such-command-here"])


@pytest.mark.slow
def test_with_prefect_starts_one_server_for_the_command(tmp_path, monkeypatch):
    """No PREFECT_API_URL: a real `prefect server start` answers the command, and is gone afterwards."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    proc = subprocess.run([str(ROOT / ".venv" / "bin" / "trml"), "with-prefect", "--", sys.executable, "-c",
                           PRINT_API_URL], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    url, status = proc.stdout.split()
    assert url.startswith("http://127.0.0.1:") and status == "200"
    with pytest.raises(httpx.HTTPError):
        httpx.get(url + "/health", timeout=2)
