"""Models by name: TRML's variants, the field's baselines, and your own (docs/models.md).

What a model is, for the harness (training loop, resume, seeds, masks, intervals, reports):

    Model(model_cfg: ModelConfig, inputs: list[InputSpec], n_outputs: int)   an nn.Module
    model(batch, mask) -> Output
        batch  {modality: (x, lengths)}: x (B, d) for an embedding, (B, T, d) for a sequence with
               lengths (B,); only the enabled modalities, in the order of `inputs`
        mask   (B, K) bool, True where modality k is there
        Output(pred, aux_loss=None): pred (B,) scores for regression, (B, n_outputs) logits for
               classification; aux_loss, a scalar tensor, is added to the task loss as it is

The harness keeps the masked-input contract for every model, not the model's author: before any forward
it replaces a masked modality's input by zeros and its length by 1, and zeros the padding beyond each
length (`trml.model.sanitize`), so what a masked entry held cannot reach the model; a dropped step of a
sequence (evaluate.protocol intra) is zeroed the same way (`trml.model.drop_steps`), its length kept.

Names (train.variant, compare.variants):
    trml, no_sml, zero_fill, upper_bound   TRML and its ablations (trml/model.py)
    lf_dnn, tfn, mult                      the field's baselines (trml/baselines.py)
    an entry point of group "trml.models"  `[project.entry-points."trml.models"] mynet = "mypkg.nets:MyNet"`
    "package.module:Class"                 any importable class, e.g. mypkg.nets:MyNet
A model outside trml/ adds the sha256 of its module's source to its run signature, so a changed model is
trained again rather than reused; compare.model_code names its folder as a DVC dependency.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
from importlib.metadata import entry_points
from pathlib import Path

import torch
import torch.nn as nn

from common.errors import ParamsError
from trml.config import ModelConfig
from trml.model import TRML, InputSpec, drop_steps, sanitize

TRML_VARIANTS = ("trml", "no_sml", "zero_fill", "upper_bound")
BASELINES = {"lf_dnn": "trml.baselines:LFDNN", "tfn": "trml.baselines:TFN", "mult": "trml.baselines:MulT"}
ENTRY_POINT_GROUP = "trml.models"


def model_class(name: str) -> type[nn.Module]:
    """The class behind a model name (see the module docstring); a ParamsError naming the fix otherwise."""
    if name in TRML_VARIANTS:
        return TRML
    target = BASELINES.get(name) or _entry_point(name) or name
    if ":" not in target:
        known = ", ".join([*TRML_VARIANTS, *BASELINES])
        raise ParamsError(f"model {name!r} is not known: use one of {known}, an entry point of group "
                          f"{ENTRY_POINT_GROUP!r}, or an import path 'package.module:Class'")
    module_name, _, attr = target.partition(":")
    if str(Path.cwd()) not in sys.path:       # a package in the project folder, as `python -m` would find it
        sys.path.append(str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ParamsError(f"model {name!r}: module {module_name!r} cannot be imported ({exc}); install the "
                          f"package or put its folder on PYTHONPATH") from exc
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ParamsError(f"model {name!r}: {module_name} has no torch.nn.Module class {attr!r}")
    return cls


def build_model(name: str, model_cfg: ModelConfig, inputs: list[InputSpec], n_outputs: int) -> nn.Module:
    cls = model_class(name)
    if cls is TRML:
        return TRML(model_cfg, inputs, n_outputs, name)
    return cls(model_cfg, list(inputs), n_outputs)


def is_external(name: str) -> bool:
    """A model whose code lives outside this project's trml/ package."""
    return not model_class(name).__module__.startswith("trml.")


def code_fingerprint(name: str) -> str | None:
    """sha256 of an external model's module source (None for the built-ins, versioned with trml/)."""
    if not is_external(name):
        return None
    path = Path(inspect.getfile(model_class(name)))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def uses_sml(name: str) -> bool:
    """Only TRML (and its upper bound) has the virtual representations that SML aligns."""
    return name in ("trml", "upper_bound")


def forward(model: nn.Module, inputs: list[InputSpec], batch: dict, mask: torch.Tensor,
            steps: dict[str, torch.Tensor] | None = None):
    """The one way the harness calls a model: on the sanitised batch. TRML sanitises its own input (so that a
    bare call keeps the contract too); sanitising it here as well would do that work twice per batch.
    steps (evaluate.protocol intra): {modality: (B, T) bool}; the dropped steps are zeros before any model sees
    them, so a model needs no code of its own for it (its interface stays (batch, mask))."""
    if steps is not None:
        batch = drop_steps(inputs, batch, steps)
    if isinstance(model, TRML):
        return model(batch, mask.bool())
    return model(sanitize(inputs, batch, mask), mask.bool())


def _entry_point(name: str) -> str | None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep.value
    return None
