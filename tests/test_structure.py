"""The structure of docs/architecture.md, checked on the source text (nothing here imports the product but
flows/cli.py's parser and features/config.py's feature-set table).

1. The rooms import only downwards: common/ (the floor) imports no room; trml/ imports nothing from
   features/ or flows/; features/ nothing from trml/ or flows/. Every import form counts (`import x`,
   `from x import y`, relative imports that climb out, imports inside functions, importlib.import_module
   and __import__ with a literal name).
2. Every project module that a DVC stage's command runs is a dependency of that stage in dvc.yaml (the file
   itself, or a folder that holds it), so that editing the code re-runs the stage.

   A stage's command is `trml <subcommand> ...`; flows/cli.py maps the subcommand to a handler (read from
   the real parser), and the handler imports what the stage runs inside its body (lazily, so that
   `trml --help` stays fast). The modules a stage runs are those imports, and everything they import in
   turn, at any depth. Two files are treated apart, on purpose:
   - flows/cli.py is the entry point of every stage but not a dependency of any: it parses the command
     line and prints errors, and its handlers only pass arguments on. Listing it would re-run every stage,
     extraction included, for a changed help text.
   - flows/params.py IS a dependency of every stage: it turns params.yaml into the objects the stage runs
     on (defaults, the dataset lookup, Params.model_for), so a change there can change any output. Its own
     imports are not followed: they are the schemas of every params section (features/config.py,
     trml/config.py), and a stage depends on the schema of the sections it reads through its own code.
   Empty package __init__.py files run nothing and need no listing.
3. One copy of each shared helper: what common/ defines (the atomic writer, the file hash, the device
   rules, the user-error base, the Strict base, the metadata reader, the layout paths) is defined nowhere
   else, under its name or under another (a function that calls os.replace, or asks torch for CUDA, outside
   the floor), and the data layout's folder names are spelled only in common/layout.py.
4. One way to fail: every error class of the rooms derives from common.errors.UserError (the CLI catches
   that alone), and flows/cli.py keeps no registry of error classes by module name.
"""
from __future__ import annotations

import ast
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "features", "flows", "trml")
ENTRY = "flows/cli.py"
EVERY_STAGE = ("flows/params.py",)          # a dependency of every stage; its imports are not followed


# ---------------------------------------------------------------- reading imports from source

@dataclass(frozen=True)
class Import:
    module: str          # absolute dotted name
    line: int
    names: tuple[str, ...] = ()    # for `from module import a, b`: a, b (each may be a submodule)


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the nodes under `if TYPE_CHECKING:`: imports for annotations only, never run."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def imports_in(tree: ast.AST, path: Path, root: Path = ROOT) -> list[Import]:
    """Every import in the tree that can run, wherever it stands (module level, functions, branches), in
    source order."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skip = type_checking_only(tree)
    found = []
    for node in sorted((n for n in ast.walk(tree) if hasattr(n, "lineno") and id(n) not in skip),
                       key=lambda n: (n.lineno, n.col_offset)):
        if isinstance(node, ast.Import):
            found += [Import(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:                       # relative: resolved against this module's package
                base = package.split(".") if package else []
                up = node.level - 1
                if up > len(base):
                    found.append(Import(f"<{'.' * node.level}{node.module or ''} beyond the top>", node.lineno))
                    continue
                base = base[:len(base) - up]
                if not base and not node.module:     # `from .. import x` at the top: x is a top-level module
                    found += [Import(alias.name, node.lineno) for alias in node.names]
                    continue
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append(Import(module, node.lineno, tuple(a.name for a in node.names)))
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if called in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                found.append(Import(node.args[0].value, node.lineno))
    return found


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def top_package(module: str) -> str:
    return module.split(".")[0]


# ---------------------------------------------------------------- 1. the rooms import downwards only

FORBIDDEN = {"common": ("features", "flows", "trml"), "trml": ("features", "flows"), "features": ("flows", "trml")}


def import_violations(root: Path = ROOT) -> list[str]:
    bad = []
    for room, forbidden in FORBIDDEN.items():
        for path in sorted((root / room).rglob("*.py")):
            for imp in imports_in(parse(path), path, root):
                if top_package(imp.module) in forbidden or "beyond the top" in imp.module:
                    bad.append(f"{path.relative_to(root)}:{imp.line} imports {imp.module}")
    return bad


def test_rooms_import_downwards_only():
    assert import_violations() == [], "common/ is the floor of every room; trml/ and features/ stand on it alone"


def test_the_import_reader_sees_every_form(tmp_path):
    """The checker itself: each way of writing an import is seen (else test 1 could pass on a violation)."""
    src = tmp_path / "trml" / "sub" / "m.py"
    src.parent.mkdir(parents=True)
    src.write_text("import features.store\n"
                   "from flows import cli\n"
                   "def f():\n    from features.media import write_clip\n"
                   "    import importlib\n    importlib.import_module('flows.extract')\n"
                   "    __import__('features')\n"
                   "from ... import features\n"
                   "from .... import anything\n"
                   "from . import sibling\n"
                   "from typing import TYPE_CHECKING\n"
                   "if TYPE_CHECKING:\n    from flows.params import Params\n")
    mods = [i.module for i in imports_in(parse(src), src, tmp_path)]
    assert mods == ["features.store", "flows", "features.media", "importlib", "flows.extract", "features",
                    "features", "<.... beyond the top>", "trml.sub", "typing"], mods
    assert len(import_violations(tmp_path)) == 7        # all but importlib, the sibling and typing
    floor = tmp_path / "common" / "x.py"
    floor.parent.mkdir()
    floor.write_text("from trml.config import ModelConfig\n")
    assert "common/x.py:1 imports trml.config" in import_violations(tmp_path)


# ---------------------------------------------------------------- 2. dvc.yaml lists the code each stage runs

def module_file(module: str) -> Path | None:
    """The project file of a dotted module name (a package's __init__.py), or None outside the project."""
    if top_package(module) not in PACKAGES:
        return None
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    raise AssertionError(f"import of {module!r}: no such project module")


def files_of(imp: Import) -> list[Path]:
    """The files an import runs: the module, its parent packages, and submodules named in `from m import s`."""
    files = []
    parts = imp.module.split(".")
    for i in range(1, len(parts) + 1):
        f = module_file(".".join(parts[:i]))
        if f is not None:
            files.append(f)
    for name in imp.names:
        sub = ROOT.joinpath(*imp.module.split("."), name)
        if top_package(imp.module) in PACKAGES and (sub.with_suffix(".py").is_file() or (sub / "__init__.py").is_file()):
            files.append(module_file(f"{imp.module}.{name}"))
    return files


def runs_nothing(path: Path) -> bool:
    body = parse(path).body
    return all(isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant) for s in body)


def closure(start: list[Path]) -> set[Path]:
    """Every project file reachable from `start` through imports of any form, at any depth."""
    seen: set[Path] = set()
    todo = list(start)
    while todo:
        path = todo.pop()
        if path in seen or str(path.relative_to(ROOT)) in (ENTRY, *EVERY_STAGE):
            continue
        seen.add(path)
        for imp in imports_in(parse(path), path):
            todo += files_of(imp)
    return {p for p in seen if not runs_nothing(p)}


def handler_imports(subcommand: str) -> list[Path]:
    """The files that `trml <subcommand>`'s handler imports in its body, and in the cli helpers it calls."""
    from flows.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert subcommand in sub.choices, f"dvc.yaml runs `trml {subcommand}`, which flows/cli.py does not define"
    handler = sub.choices[subcommand].get_default("func").__name__
    cli = parse(ROOT / ENTRY)
    functions = {n.name: n for n in cli.body if isinstance(n, ast.FunctionDef)}
    files, todo, done = [], [handler], set()
    while todo:
        name = todo.pop()
        if name in done:
            continue
        done.add(name)
        for imp in imports_in(functions[name], ROOT / ENTRY):
            files += files_of(imp)
        todo += [n.func.id for n in ast.walk(functions[name])
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in functions]
    return files


def extractor_module(feature_set: str) -> Path:
    """features.extractors imports each feature set's module by name (features.extractors.extractor_module)."""
    from features.extractors import extractor_module as module_of
    return module_file(module_of(feature_set))


def feature_sets() -> tuple[str, ...]:
    from features.config import FEATURE_SETS
    return FEATURE_SETS


def stage_bodies(dvc: dict) -> list[tuple[str, dict]]:
    """(name, body with cmd and deps) per stage; a matrix over feature sets gives one body per feature set,
    with ${item.feature_set} filled in (all feature sets, not only those params.yaml lists today)."""
    out = []
    for name, stage in dvc["stages"].items():
        body = stage.get("do", stage)
        if "${item.feature_set}" in body["cmd"]:
            for fs in feature_sets():
                out.append((f"{name}@{fs}", {"cmd": body["cmd"].replace("${item.feature_set}", fs),
                                             "deps": [str(d).replace("${item.feature_set}", fs)
                                                      for d in body.get("deps", [])]}))
        else:
            out.append((name, body))
    return out


def uncovered(dvc: dict) -> dict[str, list[str]]:
    """{stage: [project files it runs that no dep covers]}."""
    missing = {}
    for name, body in stage_bodies(dvc):
        words = shlex.split(body["cmd"])
        assert words[0] == "trml", f"stage {name}: the command is not `trml ...`: {body['cmd']!r}"
        start = handler_imports(words[1])
        if "--feature-set" in words:
            start.append(extractor_module(words[words.index("--feature-set") + 1]))
        need = {str(p.relative_to(ROOT)) for p in closure(start)} | set(EVERY_STAGE)
        deps = [str(d).rstrip("/") for d in body.get("deps", [])]
        lost = sorted(f for f in need if not any(f == d or f.startswith(d + "/") for d in deps))
        if lost:
            missing[name] = lost
    return missing


def load_dvc(path: Path = ROOT / "dvc.yaml") -> dict:
    return yaml.safe_load(path.read_text())      # safe_load merges the `<<: *train` anchors


def test_every_stage_depends_on_the_code_it_runs():
    missing = uncovered(load_dvc())
    assert missing == {}, "dvc.yaml: add these to the stage's deps (or a folder that holds them): " + \
        "; ".join(f"{stage}: {files}" for stage, files in missing.items())


def stale_deps(dvc: dict) -> dict[str, list[str]]:
    """{stage: [code deps that name no file or folder]}: a dep left behind by a move makes `dvc repro` fail."""
    stale = {}
    for name, body in stage_bodies(dvc):
        code = [str(d) for d in body.get("deps", []) if top_package(str(d).split("/")[0]) in PACKAGES
                and "${" not in str(d)]
        gone = [d for d in code if not (ROOT / d).exists()]
        if gone:
            stale[name] = gone
    return stale


def test_every_code_dep_exists():
    assert stale_deps(load_dvc()) == {}, "dvc.yaml names code that is gone; remove or rename these deps"


def test_a_stale_dep_is_noticed():
    """The checker itself: a dep on a deleted module (trml/io.py, as after the move to common/) fails."""
    dvc = load_dvc()
    dvc["stages"]["train"]["do"]["deps"].append("trml/io.py")
    assert stale_deps(dvc)["train"] == ["trml/io.py"]


@pytest.mark.parametrize("stage, code", [("train", "trml/train.py"), ("index", "features/store.py"),
                                         ("extract", "features/extractors/vision_clip.py")])
def test_a_removed_dep_is_noticed(stage, code):
    """The checker itself: dropping one module a stage runs from its deps makes the check fail."""
    dvc = load_dvc()
    body = dvc["stages"][stage].get("do", dvc["stages"][stage])
    template = "features/extractors/${item.feature_set}.py" if stage == "extract" else code
    assert template in body["deps"]
    body["deps"] = [d for d in body["deps"] if d != template]
    missing = uncovered(dvc)
    key = f"{stage}@vision_clip" if stage == "extract" else stage
    assert code in missing.get(key, []), missing


# ---------------------------------------------------------------- 3. one copy of each shared helper

FLOOR = "common"
# Calls that only a copy of a floor helper makes: the atomic writer's rename, the device resolver's question.
FLOOR_CALLS = {"os.replace": "common/files.py atomic_path", "Path.replace": "common/files.py atomic_path",
               "torch.cuda.is_available": "common/device.py resolve_device",
               "torch.cuda.is_bf16_supported": "common/device.py amp_dtype"}
LAYOUT_FOLDERS = ("index", "features")     # <data>/index/<dataset>.parquet, <data>/features/<dataset>/...
LAYOUT_MODULE = "common/layout.py"


def floor_names(root: Path = ROOT) -> dict[str, str]:
    """{name: file} of every public function and class the floor defines."""
    names = {}
    for path in sorted((root / FLOOR).rglob("*.py")):
        for node in parse(path).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                names[node.name] = str(path.relative_to(root))
    return names


def _called(node: ast.Call) -> str:
    try:
        return ast.unparse(node.func)
    except Exception:           # pragma: no cover - unparse handles every expression
        return ""


def copies_of_floor_helpers(root: Path = ROOT) -> list[str]:
    names = floor_names(root)
    bad = []
    for room in ("features", "flows", "trml"):
        for path in sorted((root / room).rglob("*.py")):
            rel = str(path.relative_to(root))
            for node in ast.walk(parse(path)):
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names:
                    bad.append(f"{rel}:{node.lineno} defines {node.name}, which {names[node.name]} owns")
                elif isinstance(node, ast.Call):
                    called = _called(node)
                    owner = FLOOR_CALLS.get(called) or (FLOOR_CALLS["Path.replace"]
                                                        if called.endswith(".replace") and len(node.args) == 1
                                                        and not node.keywords and _path_like(node) else None)
                    if owner:
                        bad.append(f"{rel}:{node.lineno} calls {called}: use {owner}")
                elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and rel != LAYOUT_MODULE:
                    for side in (node.left, node.right):
                        if isinstance(side, ast.Constant) and side.value in LAYOUT_FOLDERS:
                            bad.append(f"{rel}:{node.lineno} spells the data layout (/ {side.value!r}): "
                                       f"use {LAYOUT_MODULE}")
    return bad


def _path_like(call: ast.Call) -> bool:
    """`tmp.replace(out)`: a one-argument .replace on a name that is not a string method's (str.replace
    takes two)."""
    return isinstance(call.func, ast.Attribute)


def test_each_shared_helper_is_defined_once():
    bad = copies_of_floor_helpers()
    assert bad == [], "one copy of each shared helper, in common/: " + "; ".join(bad)


@pytest.mark.parametrize("planted, found", [
    ("import contextlib, os\n@contextlib.contextmanager\ndef atomic_path(p):\n    yield p\n",
     "defines atomic_path"),
    ("import hashlib\ndef sha256_file(p):\n    return hashlib.sha256(open(p, 'rb').read()).hexdigest()\n",
     "defines sha256_file"),
    ("import torch\ndef pick_device(s):\n    return 'cuda' if torch.cuda.is_available() else 'cpu'\n",
     "calls torch.cuda.is_available"),
    ("import os\ndef save(tmp, out):\n    os.replace(tmp, out)\n", "calls os.replace"),
    ("def save(tmp, out):\n    tmp.replace(out)\n", "calls tmp.replace"),
    ("from pydantic import BaseModel\nclass Strict(BaseModel):\n    pass\n", "defines Strict"),
    ("from pathlib import Path\ndef where(d):\n    return Path(d) / 'index' / 'x.parquet'\n",
     "spells the data layout"),
])
def test_a_planted_copy_of_a_shared_helper_is_found(tmp_path, planted, found):
    """The checker itself: a copy planted in trml/ (under the floor's name or another) fails the check."""
    for rel in ("common/files.py", "common/device.py", "common/config.py", "common/layout.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((ROOT / rel).read_text())
    (tmp_path / "trml").mkdir()
    (tmp_path / "trml" / "helpers.py").write_text(planted)
    for room in ("features", "flows"):
        (tmp_path / room).mkdir()
    bad = copies_of_floor_helpers(tmp_path)
    assert any(found in b and b.startswith("trml/helpers.py") for b in bad), bad
    (tmp_path / "trml" / "helpers.py").write_text("x = 'index'.replace('i', 'I', 1)\n")    # str.replace: fine
    assert copies_of_floor_helpers(tmp_path) == []


# ---------------------------------------------------------------- 4. one way to fail

ERROR_BASE = "UserError"
# Errors that never reach a user: a clip that can't be read becomes a row status (features/media.py).
NOT_USER_FACING = {"MediaError"}


def error_classes(root: Path = ROOT) -> dict[str, tuple[str, list[str]]]:
    """{class name: (file:line, base names)} of every class named *Error in the project."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(parse(path)):
                if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                    bases = [ast.unparse(b).split(".")[-1] for b in node.bases]
                    found[node.name] = (f"{path.relative_to(root)}:{node.lineno}", bases)
    return found


def errors_outside_the_base(root: Path = ROOT) -> list[str]:
    classes = error_classes(root)

    def reaches_base(name: str, seen: frozenset = frozenset()) -> bool:
        if name == ERROR_BASE:
            return True
        if name not in classes or name in seen:
            return False
        return any(reaches_base(b, seen | {name}) for b in classes[name][1])

    return [f"{where} {name}({', '.join(bases)})" for name, (where, bases) in sorted(classes.items())
            if name != ERROR_BASE and name not in NOT_USER_FACING and not reaches_base(name)]


def error_registries(path: Path) -> list[str]:
    """Module-level tuples or lists of (module name, class name) string pairs: a registry of errors by name."""
    bad = []
    for node in parse(path).body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        if isinstance(value, (ast.Tuple, ast.List)) and value.elts and all(
                isinstance(e, ast.Tuple) and len(e.elts) == 2
                and all(isinstance(x, ast.Constant) and isinstance(x.value, str) for x in e.elts)
                and "." in e.elts[0].value for e in value.elts):
            bad.append(f"{path.name}:{node.lineno}")
    return bad


def caught_in_main(path: Path) -> list[str]:
    main = next(n for n in parse(path).body if isinstance(n, ast.FunctionDef) and n.name == "main")
    return [ast.unparse(h.type) for n in ast.walk(main) if isinstance(n, ast.Try) for h in n.handlers]


def test_every_user_error_derives_from_one_base():
    assert errors_outside_the_base() == [], f"derive these from common.errors.{ERROR_BASE}"


def test_the_cli_catches_the_base_alone_and_keeps_no_registry():
    assert caught_in_main(ROOT / ENTRY) == [ERROR_BASE]
    assert error_registries(ROOT / ENTRY) == []


def test_a_planted_error_outside_the_base_and_a_planted_registry_are_found(tmp_path):
    """The checker itself: an error class that skips the base, and a registry by module name, both fail."""
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "errors.py").write_text("class UserError(Exception):\n    pass\n")
    (tmp_path / "trml").mkdir()
    (tmp_path / "trml" / "x.py").write_text("from common.errors import UserError\n"
                                             "class GoodError(UserError, ValueError):\n    pass\n"
                                             "class AlsoGoodError(GoodError):\n    pass\n"
                                             "class StrayError(RuntimeError):\n    pass\n")
    for package in ("features", "flows"):
        (tmp_path / package).mkdir()
    assert errors_outside_the_base(tmp_path) == ["trml/x.py:6 StrayError(RuntimeError)"]
    cli = tmp_path / "flows" / "cli.py"
    cli.write_text("USER_ERRORS = (\n    ('trml.data', 'DataError'),\n    ('flows.extract', 'ExtractionError'),\n)\n"
                   "def main():\n    try:\n        pass\n    except Exception:\n        pass\n")
    assert error_registries(cli) == ["cli.py:1"]
    assert caught_in_main(cli) == ["Exception"]
