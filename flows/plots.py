"""`trml plots`: DVC plots that render offline.

`dvc plots show` writes HTML that loads vega from a CDN, which renders blank without internet.
This builds an HTML template with vega, vega-lite and vega-embed inlined, taken from the
vl-convert-python package (a dependency, so nothing beyond the venv is needed), then runs
`dvc plots show --html-template` with it.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from common.errors import UserError
from common.files import write_text_atomic

log = logging.getLogger("flows.plots")

# DVC's plot templates are Vega-Lite v5 specs (dvc-render loads vega 5, vega-lite 5, vega-embed 6): take
# the newest Vega-Lite 5 that vl-convert bundles (its Vega and vega-embed run v5 specs unchanged).
VEGA_LITE = "5.21"

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


class PlotsError(UserError):
    pass


def offline_template(cache_dir: Path = Path(".cache/offline-plots")) -> Path:
    """The HTML template with vl-convert's vega/vega-lite/vega-embed bundle inlined; built once, then reused."""
    version = metadata.version("vl-convert-python")
    template = cache_dir / f"template-vl-convert{version}-vega-lite{VEGA_LITE}.html"
    if template.is_file():
        return template
    import vl_convert

    if VEGA_LITE not in vl_convert.get_vegalite_versions():   # it would abort the process, not raise
        raise PlotsError(f"vl-convert-python {version} bundles Vega-Lite {vl_convert.get_vegalite_versions()}, "
                         f"not {VEGA_LITE}: install the version pinned in constraints.txt")
    # Sets window.vegaEmbed, window.vega and window.vegaLite, which DVC's plot divs call.
    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE)
    # "</script" inside the bundle would end the inline element early; escape it.
    script = "<script>\n" + bundle.replace("</script", "<\\/script") + "\n</script>"
    write_text_atomic(PAGE.format(inline_scripts=script), template)
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
