"""The mining pipeline refuses inputs it cannot mine, and plans its Ray cannot place, before reading anything, in one
sentence that names the key and the fix. Each check runs on the driver before the first Ray task (the last test asks
the tests' local Ray what it has)."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maple.data.config import DataConfig
from maple.judge.config import JudgeConfig
from maple.mining.config import MineConfig
from maple.section import RunConfig, SetupError
from maple.stages.mining import input_shards, mine_pairs


def _mine(tmp_path, source) -> None:
    mine_pairs(MineConfig(input=str(source), output=str(tmp_path / "mined")), JudgeConfig(), DataConfig(),
               RunConfig(output_dir=str(tmp_path)), model_path=str(tmp_path / "no-model"))


def test_a_folder_of_images_is_not_an_input_and_the_message_says_to_write_shards(tmp_path):
    for name in ("a.jpg", "b.png"):
        (tmp_path / name).write_bytes(b"\x89PNG")
    with pytest.raises(SetupError, match=rf"^mine.input={tmp_path} holds 2 image files but no Parquet shards; .*write "
                                         r"the images and their captions into shards and point mine.input at"):
        input_shards(tmp_path)


def test_an_input_that_does_not_exist_names_the_key(tmp_path):
    with pytest.raises(SetupError, match=rf"^mine.input={tmp_path / 'nope'} does not exist; point it at a folder"):
        input_shards(tmp_path / "nope")


def test_shards_whose_captions_sit_under_another_column_fail_before_any_read(tmp_path):
    shards = tmp_path / "pairs"
    shards.mkdir()
    for k in range(2):
        pq.write_table(pa.table({"id": ["p0"], "image": [b"\x89PNG"], "description": ["a red circle"]}),
                       shards / f"part-{k}.parquet")
    with pytest.raises(SetupError, match=r"^mine.input=.*pairs: none of its 2 shards can be read as image-text pairs: "
                                         r".*part-0.parquet: no column for 'captions' \(looked for captions, caption, "
                                         r"text\); the shard has columns \['id', 'image', 'description'\]\. Rename"):
        _mine(tmp_path, shards)


def test_one_shard_with_the_right_columns_is_enough_to_start(tmp_path):
    from maple.data.parquet_pairs import check_columns

    bad, good = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pq.write_table(pa.table({"id": ["p0"], "image": [b"x"], "description": ["a"]}), bad)
    pq.write_table(pa.table({"id": ["p1"], "image": [b"x"], "caption": ["a"]}), good)
    check_columns([str(bad), str(good)], "mine.input")  # the bad shard is the quarantine's business


def test_a_plan_larger_than_the_local_ray_fails_before_any_read(ray_local, small_world, tmp_path):
    """The tests' local Ray (4 CPUs, no GPU, no autoscaler): judge actors that cannot all be placed, and a judge
    pinned to a GPU type no node has, are refused at start instead of waiting forever."""
    world, _ = small_world
    mine = MineConfig(input=str(world / "train"), output=str(tmp_path / "mined"))
    run = RunConfig(output_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"the mining stream's actors ask 8 CPUs .* but Ray Data may use 4 "):
        mine_pairs(mine, JudgeConfig(num_actors=8), DataConfig(), run, model_path=str(tmp_path / "no-model"))
    with pytest.raises(SetupError, match=r"^judge.accelerator_type=A100: no node of this Ray cluster has that GPU"):
        mine_pairs(mine, JudgeConfig(accelerator_type="A100"), DataConfig(), run, model_path=str(tmp_path / "no-model"))


def test_ray_data_s_cap_from_the_run_section_bounds_the_plan(ray_local, small_world, tmp_path):
    """`run.data_max_cpus` / `run.data_max_gpus` become Ray Data's resource limits (what it uses and asks an
    autoscaler for); a judge pool that fits the cluster but not the cap is refused, naming the key."""
    from maple.runtime import init_ray

    world, _ = small_world
    mine = MineConfig(input=str(world / "train"), output=str(tmp_path / "mined"))
    options = ray_local.data.DataContext.get_current().execution_options
    before = options.resource_limits
    try:
        init_ray(RunConfig(output_dir=str(tmp_path), data_max_cpus=2, data_max_gpus=0))
        assert (options.resource_limits.cpu, options.resource_limits.gpu) == (2, 0)
        with pytest.raises(ValueError, match=r"actors ask 2 CPUs .* but Ray Data may use 2 .* raise run.data_max_cpus"):
            mine_pairs(mine, JudgeConfig(num_actors=2), DataConfig(), RunConfig(output_dir=str(tmp_path)),
                       model_path=str(tmp_path / "no-model"))
    finally:
        options.resource_limits = before
    init_ray(RunConfig(output_dir=str(tmp_path)))  # no cap set: Ray Data's limits are left as they are
    assert options.resource_limits == before
