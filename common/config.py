"""The base of every params.yaml section: an unknown key is an error, and settings never change in a run."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
