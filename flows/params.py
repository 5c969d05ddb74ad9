"""One typed model of the whole params.yaml, with errors that name the file, the key and the fix."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from common.config import Strict
from common.errors import ParamsError
from features.config import DEFAULT_FEATURE_SETS, DatasetConfig, ExtractConfig, FeatureSet, SampleConfig
from trml.config import CompareConfig, EvaluateConfig, ModalitiesConfig, ModelConfig, TrainConfig


class MmsaModalities(ModalitiesConfig):
    """model.modalities for an imported MMSA pickle: its three tables, any of them switchable off."""
    text: Literal["mmsa_text"] | None = Field("mmsa_text", description="MMSA's text (BERT or GloVe per token)")
    vision: Literal["mmsa_vision"] | None = Field("mmsa_vision", description="MMSA's vision (e.g. OpenFace, Facet)")
    audio: Literal["mmsa_audio"] | None = Field("mmsa_audio", description="MMSA's audio (e.g. COVAREP, librosa)")
    face: None = Field(None, description="an MMSA pickle has no separate face table")

    @field_validator("face", mode="before")
    @classmethod
    def _no_face(cls, v):
        if v is not None:
            raise ValueError("an MMSA pickle has no face table (MMSA's facial features are its vision); "
                             "set it to null or leave it out")
        return v

    @model_validator(mode="after")
    def _one_on(self):
        if not self.enabled():
            raise ValueError("every modality is null; keep at least one of text, audio, vision")
        return self


class MmsaPickleConfig(Strict):
    """An MMSA / MMSA-FET feature pickle imported by the import_mmsa stage (`trml import-mmsa`).

    It has no raw media: index and extract do not run for it. Its tables are mmsa_{text,audio,vision};
    train, evaluate and compare use `model` with `modalities` replaced by this entry's.
    """
    # No dots: dvc.yaml reads the params key mmsa_pickles.<name>, and a dot would split it.
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$", description="used in every output path")
    pickle: Path = Field(description="the .pkl (aligned_50.pkl, unaligned_50.pkl); a DVC dependency")
    task: Literal["regression"] = Field(
        "regression", description="the importer reads MMSA's regression_labels (in [-3, 3])")
    modalities: MmsaModalities = Field(MmsaModalities(), description="feature set per modality; null = off")


class Params(Strict):
    # Keyed by dataset name: dvc.yaml's foreach/matrix loop over these keys. Outside a project there may be
    # none: `trml index --layout --root` names the raw folder, and the manifest then records it for extract.
    datasets: dict[str, DatasetConfig] = Field(default_factory=dict)
    # Imported MMSA feature pickles, keyed by dataset name (dvc.yaml: import_mmsa, train_mmsa, ...).
    mmsa_pickles: dict[str, MmsaPickleConfig] = Field(default_factory=dict)
    feature_sets: list[FeatureSet] = Field(default_factory=lambda: list(DEFAULT_FEATURE_SETS), min_length=1)
    sample: SampleConfig = SampleConfig()
    extract: ExtractConfig = ExtractConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    compare: CompareConfig = CompareConfig()

    @model_validator(mode="before")
    @classmethod
    def _name_datasets(cls, data):
        """Each dataset's name is its key under `datasets:` (and under `mmsa_pickles:`)."""
        if not isinstance(data, dict):
            return data
        if "mmsa_pickles" in data and data["mmsa_pickles"] is None:
            raise ValueError("mmsa_pickles is null (an empty `mmsa_pickles:` line); write `mmsa_pickles: {}` "
                             "or give it entries (dvc.yaml loops over it, so it must be a mapping)")
        for section in ("datasets", "mmsa_pickles"):
            if not isinstance(data.get(section), dict):
                continue
            named = {}
            for key, block in data[section].items():
                if "." in str(key):
                    raise ValueError(f"{section}.{key}: a name with a dot breaks dvc.yaml's params key "
                                     f"{section}.<name>; rename it, e.g. {str(key).replace('.', '_')}")
                if isinstance(block, dict):
                    if "name" in block and block["name"] != key:
                        raise ValueError(f"{section}.{key}.name is {block['name']!r}; remove it "
                                         f"(a dataset's name is its key)")
                    block = {**block, "name": str(key)}
                named[key] = block
            data = {**data, section: named}
        if isinstance(data.get("datasets"), dict) and isinstance(data.get("mmsa_pickles"), dict):
            clash = sorted(set(map(str, data["datasets"])) & set(map(str, data["mmsa_pickles"])))
            if clash:
                name = clash[0]
                raise ValueError(f"datasets.{name} and mmsa_pickles.{name} both define dataset {name!r}; "
                                 f"their outputs (data/index/{name}.parquet, models/{name}, ...) would collide. "
                                 f"Rename one of the two keys")
        return data

    def known_datasets(self) -> str:
        return f"datasets: {sorted(self.datasets)}, mmsa_pickles: {sorted(self.mmsa_pickles)}"

    def dataset(self, name: str) -> DatasetConfig:
        """A raw dataset (one with media to index and extract)."""
        if name in self.datasets:
            return self.datasets[name]
        if name in self.mmsa_pickles:
            raise ParamsError(f"dataset {name!r} is an imported MMSA pickle (mmsa_pickles.{name}): it has no raw "
                              f"media to index or extract. Its tables come from `trml import-mmsa` "
                              f"(`dvc repro import_mmsa`); train, evaluate and compare work on it")
        raise ParamsError(f"dataset {name!r} is not in params.yaml ({self.known_datasets()}); add a block "
                          f"for it under `datasets:` (raw media) or `mmsa_pickles:` (an MMSA feature pickle)")

    def dataset_to_index(self, name: str, layout: str | None = None, root: str | None = None,
                         task: str | None = None, where: str = "params.yaml") -> DatasetConfig:
        """The dataset `trml index` reads: datasets.<name>, or a new one from --layout and --root (with
        datasets.<name>'s other settings when it exists); --task overrides the task either way."""
        if layout is None and root is None:
            if name not in self.datasets and name not in self.mmsa_pickles:
                raise ParamsError(f"dataset {name!r}: {where}, so give --layout and --root (e.g. `trml index "
                                  f"--layout folder --root ~/videos --dataset {name}`), or add it under "
                                  f"`datasets:` in params.yaml")
            ds = self.dataset(name)
            return ds if task is None else ds.model_copy(update={"task": task})
        if layout is None or root is None:
            raise ParamsError(f"give both --layout and --root, or neither (then params.yaml's datasets entry "
                              f"{name!r} is used)")
        base = self.datasets[name].model_dump() if name in self.datasets else {}
        base.update(name=name, layout=layout, root=root)
        if task:
            base["task"] = task
        try:
            return DatasetConfig.model_validate(base)
        except ValidationError as exc:
            raise ParamsError(format_validation_error(Path("--layout/--root"), exc)) from None

    def with_option(self, section: str, key: str, value) -> "Params":
        """These params with `section.key` set from a command-line option, validated like params.yaml."""
        block = getattr(self, section)
        try:
            new = type(block).model_validate({**block.model_dump(), key: value})
        except ValidationError as exc:
            raise ParamsError(f"--{key.replace('_', '-')} {value}: {exc.errors()[0]['msg']}") from None
        return self.model_copy(update={section: new})

    def model_for(self, name: str) -> ModelConfig:
        """`model` as training on dataset `name` uses it: an MMSA pickle brings its own `modalities`."""
        if name in self.mmsa_pickles:
            mods = self.mmsa_pickles[name].modalities
            return self.model.model_copy(update={"modalities": ModalitiesConfig(**mods.model_dump())})
        if name in self.datasets:
            return self.model
        raise ParamsError(f"dataset {name!r} is not in params.yaml ({self.known_datasets()}); add a block "
                          f"for it under `datasets:` (raw media) or `mmsa_pickles:` (an MMSA feature pickle)")


PARAMS_FILE = Path("params.yaml")


def default_params() -> Params:
    """The built-in defaults (every section's own defaults, no datasets): what `trml index` and `trml extract`
    run on outside a project, where there is no params.yaml."""
    return Params()


def load_params(path: str | Path = PARAMS_FILE) -> Params:
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
    """One line: the file, then each invalid key with what was given and what is allowed."""
    lines: list[str] = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        given = err.get("input")
        if err["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key (given {given!r}); remove it or check its spelling")
        elif err["type"] == "missing":
            lines.append(f"{key}: required, but not given. Add it")
        elif not err["loc"]:         # a whole-file check: the message names the keys; the input is the file
            lines.append(err["msg"].removeprefix("Value error, "))
        else:
            allowed = err["msg"]
            lines.append(f"{key}: given {given!r}; {allowed}")
    count = f"{len(lines)} invalid settings: " if len(lines) > 1 else ""
    return f"{path}: {count}" + "; ".join(lines)
