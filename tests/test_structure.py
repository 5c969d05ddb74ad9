"""The structure of docs/architecture.md, checked on the source text (nothing here imports the product).

1. trml/ imports nothing from features/ or flows/: every import form counts (`import x`, `from x import y`,
   relative imports that climb out of trml/, imports inside functions, importlib.import_module and
   __import__ with a literal name).
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
"""
from __future__ import annotations

import ast
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("features", "flows", "trml")
ENTRY = "flows/cli.py"
EVERY_STAGE = ("flows/params.py",)          # a dependency of every stage; its imports are not followed
EXTRACTOR_REGISTRY = "features/extractors/__init__.py"   # _CLASSES: feature set -> module, imported by name


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


# ---------------------------------------------------------------- 1. trml/ stands alone

def import_violations(root: Path = ROOT) -> list[str]:
    bad = []
    for path in sorted((root / "trml").rglob("*.py")):
        for imp in imports_in(parse(path), path, root):
            if top_package(imp.module) in ("features", "flows") or "beyond the top" in imp.module:
                bad.append(f"{path.relative_to(root)}:{imp.line} imports {imp.module}")
    return bad


def test_trml_imports_nothing_from_features_or_flows():
    assert import_violations() == [], "trml/ turns Parquet into models and must not reach into features/ or flows/"


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
    """features.extractors imports each feature set's module by name, from its _CLASSES table."""
    tree = parse(ROOT / EXTRACTOR_REGISTRY)
    table = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "_CLASSES" for t in n.targets))
    return module_file(table[feature_set][0])


def feature_sets() -> tuple[str, ...]:
    tree = parse(ROOT / "features" / "config.py")
    return next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "FEATURE_SETS" for t in n.targets))


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
