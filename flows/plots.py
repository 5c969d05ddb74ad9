"""`trml plots`: DVC plots that render offline.

`dvc plots show` writes HTML that loads vega from a CDN, which renders blank without internet.
This builds an HTML template with vega, vega-lite and vega-embed inlined (installed from the npm
registry once, into .cache/), then runs `dvc plots show --html-template` with it.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("flows.plots")

# The majors DVC's vega templates are written for (dvc-render loads vega 5, vega-lite 5, vega-embed 6).
NPM_PACKAGES = {"vega": "5.33.1", "vega-lite": "5.23.0", "vega-embed": "6.29.0"}
BUNDLES = ("vega/build/vega.min.js", "vega-lite/build/vega-lite.min.js", "vega-embed/build/vega-embed.min.js")

PAGE = """<!DOCTYPE html>
<html>
<head>
  <meta charset="utf-8">
  <title>trml-pipeline plots</title>
  {inline_scripts}
  <style>body {{ font-family: sans-serif; }} table {{ border-spacing: 15px; }}</style>
</head>
<body>
  <h1>trml-pipeline plots</h1>
  {{plot_divs}}
</body>
</html>
"""


class PlotsError(RuntimeError):
    pass


def offline_template(cache_dir: Path = Path(".cache/offline-plots")) -> Path:
    """The HTML template with the three bundles inlined; built once, then reused."""
    template = cache_dir / f"template-vega{NPM_PACKAGES['vega']}.html"
    if template.is_file():
        return template
    modules = cache_dir / "npm" / "node_modules"
    if not all((modules / b).is_file() for b in BUNDLES):
        npm = shutil.which("npm")
        if npm is None:
            raise PlotsError("npm not found: it is needed once to fetch vega, vega-lite and vega-embed from the "
                             "npm registry (apt-get install npm). The PNG plots under plots/ need nothing.")
        log.info("installing %s from the npm registry into %s", NPM_PACKAGES, cache_dir / "npm")
        specs = [f"{name}@{version}" for name, version in NPM_PACKAGES.items()]
        proc = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--silent", "--prefix",
                               str(cache_dir / "npm"), *specs], capture_output=True, text=True)
        if proc.returncode != 0:
            raise PlotsError(f"npm install {' '.join(specs)} failed:\n{proc.stderr[-2000:]}")
    # "</script" inside a bundle would end the inline element early; escape it.
    scripts = "\n".join(
        "<script>\n" + (modules / b).read_text(encoding="utf-8").replace("</script", "<\\/script") + "\n</script>"
        for b in BUNDLES)
    tmp = template.with_suffix(".tmp")
    tmp.write_text(PAGE.format(inline_scripts=scripts), encoding="utf-8")
    tmp.replace(template)
    return template


def dvc_executable() -> str:
    """The dvc installed beside this Python (the project's venv), else the one on PATH."""
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.is_file() else (shutil.which("dvc") or "dvc")


def show_plots(out_dir: Path = Path("dvc_plots"), dvc: str | None = None) -> Path:
    """Run `dvc plots show` with the offline template; return the index.html path."""
    template = offline_template()
    dvc = dvc or dvc_executable()
    proc = subprocess.run([dvc, "plots", "show", "--html-template", str(template), "-o", str(out_dir)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise PlotsError(f"dvc plots show failed:\n{proc.stdout}\n{proc.stderr}")
    index = out_dir / "index.html"
    if "cdn.jsdelivr.net" in index.read_text(encoding="utf-8"):
        raise PlotsError(f"{index} still refers to a CDN; the offline template was not applied")
    return index
