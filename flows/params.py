"""One typed model of the whole params.yaml, with errors that name the file, the key and the fix."""
from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field, ValidationError, model_validator

from features.config import FEATURE_SETS, DatasetConfig, ExtractConfig, FeatureSet, SampleConfig, Strict
from trml.config import CompareConfig, EvaluateConfig, ModelConfig, TrainConfig


class Params(Strict):
    # Keyed by dataset name: dvc.yaml's foreach/matrix loop over these keys.
    datasets: dict[str, DatasetConfig] = Field(min_length=1)
    feature_sets: list[FeatureSet] = Field(default_factory=lambda: list(FEATURE_SETS), min_length=1)
    sample: SampleConfig = SampleConfig()
    extract: ExtractConfig = ExtractConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    compare: CompareConfig = CompareConfig()

    @model_validator(mode="before")
    @classmethod
    def _name_datasets(cls, data):
        """Each dataset's name is its key under `datasets:`."""
        if isinstance(data, dict) and isinstance(data.get("datasets"), dict):
            named = {}
            for key, block in data["datasets"].items():
                if isinstance(block, dict):
                    if "name" in block and block["name"] != key:
                        raise ValueError(f"datasets.{key}.name is {block['name']!r}; remove it "
                                         f"(a dataset's name is its key)")
                    block = {**block, "name": str(key)}
                named[key] = block
            data = {**data, "datasets": named}
        return data

    def dataset(self, name: str) -> DatasetConfig:
        if name in self.datasets:
            return self.datasets[name]
        raise ParamsError(f"dataset {name!r} is not in params.yaml datasets "
                          f"(known: {sorted(self.datasets)}); add a block for it under `datasets:`")


class ParamsError(ValueError):
    """params.yaml is malformed: the message names the key, the value and what is allowed."""


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: not found. Run from the project root, or pass --params PATH.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(format_validation_error(path, exc)) from None


def format_validation_error(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: {exc.error_count()} invalid setting(s):"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        given = err.get("input")
        if err["type"] == "extra_forbidden":
            lines.append(f"  - {key}: unknown key (given {given!r}). Remove it or check its spelling.")
        else:
            allowed = err["msg"]
            lines.append(f"  - {key}: given {given!r}; {allowed}.")
    return "\n".join(lines)
