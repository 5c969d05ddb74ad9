"""Shard size per feature set: texts and audio in shards of hundreds, videos in tens; one number sets all;
the flow cuts each set's manifest by its own size. And the text-scale benchmark's generated dataset."""
from __future__ import annotations

import pytest
import yaml

from features.config import FEATURE_SETS, ExtractConfig
from features.store import ManifestRow, read_manifest
from flows.bench import make_text_dataset
from flows.params import ParamsError, load_params


def test_defaults_are_per_feature_set_and_one_number_sets_all():
    sizes = ExtractConfig().shard_size
    assert min(sizes.text_minilm, sizes.text_clip, sizes.audio_librosa) >= 100      # cheap items
    assert max(sizes.vision_clip, sizes.face_mediapipe) < 100                       # videos
    assert {fs: ExtractConfig.model_validate({"shard_size": 7}).shard_size.of(fs) for fs in FEATURE_SETS} == \
        dict.fromkeys(FEATURE_SETS, 7)
    one = ExtractConfig.model_validate({"shard_size": {"text_minilm": 1000}}).shard_size
    assert one.text_minilm == 1000 and one.vision_clip == sizes.vision_clip         # the rest keep defaults


@pytest.mark.parametrize("value, key", [({"text_bert": 64}, "extract.shard_size.text_bert"),
                                        ({"vision_clip": 0}, "extract.shard_size.vision_clip")])
def test_bad_shard_size_names_the_key(tmp_path, value, key):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"extract": {"shard_size": value}}))
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        load_params(path)


def test_the_flow_cuts_each_set_by_its_own_size(tmp_path):
    from flows.extract import plan_feature_set

    cfg = ExtractConfig.model_validate({"device": "cpu", "shard_size": {"text_minilm": 5, "audio_librosa": 3}})
    rows = [ManifestRow(f"v/{i}", None, f"sentence number {i}") for i in range(12)]
    text = plan_feature_set("text_minilm", tmp_path, rows, cfg, "cpu", tmp_path)
    audio = plan_feature_set("audio_librosa", tmp_path, rows, cfg, "cpu", tmp_path)
    assert [len(items) for _, items in text.shards] == [5, 5, 2]
    assert [len(items) for _, items in audio.shards] == [3, 3, 3, 3]
    assert [i.utterance_id for _, items in text.shards for i in items] == [r.utterance_id for r in rows]


def test_text_bench_dataset_is_n_generated_sentences_without_media(tmp_path):
    root, rows = read_manifest(make_text_dataset(40, tmp_path))
    assert len(rows) == 40 and len({r.utterance_id for r in rows}) == 40
    assert all(r.media_path is None and r.text and r.text.strip() for r in rows)
    assert len({r.text for r in rows}) > 30                                          # varied, not one line
    assert read_manifest(make_text_dataset(40, tmp_path / "again"))[1] == rows       # deterministic
