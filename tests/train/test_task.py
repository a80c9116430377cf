"""TrainTask's progress hook: ticks on rank 0 only, and stays on the driver when the task is pickled to workers."""

import pickle

from maple.models.config import ModelConfig
from maple.recipes.embedder import EmbedderTask
from maple.train.config import TrainConfig


def test_the_progress_hook_ticks_on_rank_0_and_is_not_pickled():
    ticks = []
    task = EmbedderTask(ModelConfig(), TrainConfig())
    task.on_step = lambda: ticks.append(1)  # a lambda: pickle would refuse it if it travelled
    task.after_step(1, rank=0)
    task.after_step(1, rank=1)
    assert ticks == [1]
    assert pickle.loads(pickle.dumps(task)).on_step is None
