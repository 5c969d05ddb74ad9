"""`trml plots` without npm: the offline template inlines vl-convert-python's real vega/vega-lite/vega-embed
bundle, and `dvc plots show` with it writes a page that loads nothing from a CDN."""
from __future__ import annotations

import re
import subprocess

import pytest

from flows.plots import dvc_executable, offline_template, show_plots


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A DVC project (no git) with one plot: a train log as DVC plots reads it."""
    root = tmp_path_factory.mktemp("plots-project")
    subprocess.run([dvc_executable(), "init", "--no-scm", "-q"], cwd=root, check=True)
    (root / "train_log.csv").write_text("epoch,loss\n0,1.0\n1,0.6\n2,0.45\n")
    (root / "dvc.yaml").write_text("plots:\n  - train_log.csv:\n      x: epoch\n      y: loss\n")
    return root


def test_template_is_built_without_npm_and_inlines_real_vega(project, monkeypatch):
    monkeypatch.chdir(project)
    monkeypatch.setenv("PATH", str(project / "no-tools-here"))     # no npm (nor anything else) on PATH
    template = offline_template()
    html = template.read_text(encoding="utf-8")
    assert len(html) > 500_000                                     # the libraries themselves, not a loader
    for name in ("vegaEmbed", "vega", "vegaLite"):
        assert f"window.{name}=" in html
    assert "{plot_divs}" in html and "<script src=" not in html
    assert not re.search(r"cdn\.jsdelivr\.net|unpkg\.com", html)
    assert offline_template() == template                          # built once, then reused


def test_dvc_plots_show_with_it_loads_nothing_from_a_cdn(project, monkeypatch):
    monkeypatch.chdir(project)
    index = show_plots(project / "dvc_plots")
    page = index.read_text(encoding="utf-8")
    assert "vegaEmbed('#" in page and '"loss"' in page               # DVC's plot div with the data
    assert not re.search(r"<script[^>]+src=", page)
    assert "cdn.jsdelivr.net" not in page
