"""PAL's feature cache on a local Ray: one output shard per input shard, features equal to the frozen encoders',
bad images quarantined, finished shards skipped, and both readers give the same batches."""

import numpy as np
import pyarrow.parquet as pq
import torch

from maple.data.features import FeatureTensors, collate_features, feature_paths, read_features
from maple.data.images import decode_image
from maple.models.anchor import AnchorAligner
from maple.stages.features import cache_features


def test_each_input_shard_gets_its_output_shard_and_bad_images_are_quarantined(pal_cache, pal_splits):
    cache, _, reports = pal_cache
    assert sorted(reports["val"]["computed"]) == ["part-00000.parquet", "part-00001.parquet"]
    assert sorted(p.name for p in (cache / "val").glob("part-*.parquet")) == reports["val"]["computed"]
    quarantined = pq.read_table(cache / "val" / "quarantine" / "part-00001.parquet").to_pylist()
    assert [q["id"] for q in quarantined] == ["broken-1"] and quarantined[0]["reason"].startswith("corrupt")
    n_good = pq.read_metadata(pal_splits / "val" / "part-00000.parquet").num_rows + 1
    assert reports["val"]["rows"] == n_good == read_features(cache, "val").num_rows


def test_a_second_run_skips_every_finished_shard(pal_cache, pal_splits):
    cache, encoders, _ = pal_cache
    again = cache_features(pal_splits / "val", cache, "val", encoders)
    assert again["computed"] == [] and len(again["skipped"]) == 2


def test_cached_features_equal_the_frozen_encoders_token_features(pal_cache, pal_splits):
    cache, encoders, _ = pal_cache
    model = AnchorAligner.from_pretrained(encoders)
    row = read_features(cache, "train").slice(0, 1).to_pylist()[0]
    source = pq.read_table(pal_splits / "train" / "part-00000.parquet").slice(0, 1).to_pylist()[0]
    assert row["id"] == source["id"]
    tokens, _ = model.image_tokens(model.preprocess([decode_image(source["image"])])["pixel_values"])
    cached = torch.tensor(np.asarray(row["image_tokens"], dtype=np.float32)).reshape(row["image_token_count"], -1)
    assert torch.allclose(cached, tokens[0], atol=1e-2, rtol=1e-2)  # stored as float16
    hidden, mask = model.text_tokens(**model.tokenize([source["captions"][0]]))
    cached_text = torch.tensor(np.asarray(row["caption_tokens"][0], dtype=np.float32)).reshape(
        row["caption_token_counts"][0], -1)
    assert torch.allclose(cached_text, hidden[0][mask[0].bool()], atol=1e-2, rtol=1e-2)


def test_ray_batches_and_in_process_tensors_collate_to_the_same_batch(pal_cache, ray_local):
    cache, _, _ = pal_cache
    ds = ray_local.data.read_parquet(feature_paths(cache, "train"))
    rows = next(iter(ds.iter_batches(batch_size=6, batch_format="numpy")))
    from_ray = collate_features(rows, epoch=3, seed=1)
    table = read_features(cache, "train")
    index = torch.tensor([table["id"].to_pylist().index(i) for i in rows["id"]])
    in_process = FeatureTensors(table).batch(index, epoch=3, seed=1)
    for key in from_ray:
        assert torch.equal(from_ray[key], in_process[key]), key
