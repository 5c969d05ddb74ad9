"""`make mutate`'s driver: a seeded sample of mutmut's mutants per module, then the score table.

A full run of the core's ~5,000 mutants does not fit in a few hours on 2 cores (issue 21), so each module gets a
random sample of `--per-module` mutants, drawn with a fixed seed from the sorted mutant names: the same code gives
the same sample. A module with fewer mutants than that is run whole.

    python tests/mutation_sample.py restrict                 # each module's mutants meet its own test files only
    python tests/mutation_sample.py names --per-module 100   # the sample, one name per line
    python tests/mutation_sample.py report --per-module 100  # the per-module table, survivors listed
    --modules REGEX keeps the modules whose dotted name matches (e.g. 'metrics|stats').

Equivalent mutants (they cannot change behaviour) are the fully qualified names written in backticks in
docs/benchmarks.md's "Mutation score" section, each with its reason there: one owner for the list.
"""
from __future__ import annotations

import argparse
import json
import random
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTANTS = ROOT / "mutants"
BENCHMARKS = ROOT / "docs" / "benchmarks.md"
SEED = 21
# mutmut 3.8's exit codes (mutmut/stats.py status_by_exit_code): 1 and 3 are kills, and so is a timeout.
KILLED = {1, 3, 24, -24, 36, 152, 255}
NOT_RUN = {None, 34}
# The test files run against each module's mutants. mutmut would run every test that reaches a function, and a
# metric reached from a training test would cost that whole training per mutant; the module's own tests are
# the ones meant to pin its behaviour.
TEST_FILES = {
    "trml.metrics": ["test_metrics.py"],
    "trml.missing": ["test_trml.py", "test_protocols.py"],
    "trml.model": ["test_trml.py", "test_models.py", "test_protocols.py"],
    "trml.stats": ["test_intervals.py", "test_results.py"],
    "trml.train": ["test_trml.py", "test_results.py", "test_protocols.py", "test_training_run.py"],
    "trml.checkpoint": ["test_checkpoint.py", "test_trml.py", "test_results.py"],
    "trml.evaluate": ["test_trml.py", "test_results.py", "test_protocols.py"],
    "trml.compare": ["test_trml.py", "test_results.py", "test_protocols.py"],
    "features.store": ["test_store.py", "test_truncated.py", "test_shard_size.py", "test_adapters.py",
                       "test_unimodal_labels.py"],
    "features.adapters": ["test_adapters.py", "test_unimodal_labels.py", "test_mmsa_pickle.py"],
    "features.extractors.base": ["test_audio_rules.py", "test_truncated.py"],
}


def mutants_by_module(modules: str = ".") -> dict[str, dict[str, int | None]]:
    """{module path: {mutant name: exit code}} from mutmut's .meta files, for the modules matching `modules`."""
    found: dict[str, dict[str, int | None]] = {}
    for meta in sorted(MUTANTS.rglob("*.py.meta")):
        module = meta.relative_to(MUTANTS).as_posix().removesuffix(".meta")
        if re.search(modules, module.removesuffix(".py").replace("/", ".")):
            found[module] = json.loads(meta.read_text())["exit_code_by_key"]
    if not found:
        raise SystemExit("no mutants yet: run `make mutate` (it generates them first)")
    return found


def module_of(name: str) -> str:
    """"trml.stats.x_summarize__mutmut_3" and "features.store.xǁTableInfoǁto_metadata" -> their module."""
    return re.match(r"(.+?)\.x[_ǁ]", name).group(1)


def restrict() -> None:
    """Keep, for each mutated function, only the tests of its module's TEST_FILES in mutmut's test map."""
    path = MUTANTS / "mutmut-stats.json"
    stats = json.loads(path.read_text())
    for function, tests in stats["tests_by_mangled_function_name"].items():
        module = module_of(function)
        if module not in TEST_FILES:
            raise SystemExit(f"{function}: module {module} has no TEST_FILES entry in {__file__}")
        allowed = {f"tests/{name}" for name in TEST_FILES[module]}
        stats["tests_by_mangled_function_name"][function] = [t for t in tests if t.split("::")[0] in allowed]
    path.write_text(json.dumps(stats))


def sample(names: list[str], per_module: int) -> list[str]:
    names = sorted(names)
    return names if len(names) <= per_module else sorted(random.Random(SEED).sample(names, per_module))


def equivalent_names() -> set[str]:
    text = BENCHMARKS.read_text()
    section = text[text.index("## Mutation score"):]
    section = section[:section.find("\n## ", 3)]
    return set(re.findall(r"`((?:\w+\.)+x[_ǁ]\w+__mutmut_\d+)`", section))   # functions and methods (xǁClassǁ...)


def report(per_module: int, modules: str) -> str:
    equivalent = equivalent_names()
    lines = ["| module | sampled / all | killed | equivalent | survived | not run | score |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    survivors: dict[str, list[str]] = defaultdict(list)
    for module, codes in mutants_by_module(modules).items():
        chosen = sample(list(codes), per_module)
        killed = sum(codes[n] in KILLED for n in chosen)
        equiv = sum(n in equivalent and codes[n] not in KILLED for n in chosen)
        not_run = sum(codes[n] in NOT_RUN for n in chosen)
        alive = [n for n in chosen if codes[n] not in KILLED | NOT_RUN and n not in equivalent]
        survivors[module] = alive
        scored = killed + len(alive)
        score = f"{100 * killed / scored:.1f}%" if scored else "n/a"
        lines.append(f"| `{module}` | {len(chosen)} / {len(codes)} | {killed} | {equiv} | {len(alive)} | "
                     f"{not_run} | {score} |")
    for module, alive in survivors.items():
        if alive:
            lines.append(f"\nsurvived in {module}: " + " ".join(alive))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["restrict", "names", "report"])
    parser.add_argument("--per-module", type=int, default=100)
    parser.add_argument("--modules", default=".")
    args = parser.parse_args()
    if args.what == "restrict":
        restrict()
    elif args.what == "names":
        for codes in mutants_by_module(args.modules).values():
            print("\n".join(sample(list(codes), args.per_module)))
    else:
        print(report(args.per_module, args.modules))


if __name__ == "__main__":
    main()
