"""MATE fixtures: a tiny random BERT as the LLM-side embedder (the real code path of `TextTower`, built offline in
milliseconds; MiniLM's tokenizer, a 32-token window so that chunking happens on short texts) and a tiny MATE model."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from maple.data.long_text import long_text_rows
from maple.models.config import MateConfig, ModelConfig, TinyConfig
from maple.models.mate import MateEmbedder
from maple.models.text_tower import minilm_path

LLM_WINDOW = 32


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llm")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=48, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": LLM_WINDOW}))
    return path


def mate_model_config(llm_dir, **mate) -> ModelConfig:
    tiny = TinyConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, patch_size=16, embed_dim=32)
    return ModelConfig(family="mate", tiny=tiny, mate=MateConfig(llm=str(llm_dir), projection_hidden=64,
                                                                 vlm_text_tokens=16, **mate))


@pytest.fixture(scope="session")
def mate_config(tiny_llm_dir):
    """`mate_config(**model.mate keys) -> ModelConfig` of a tiny MATE model over the tiny LLM."""
    return lambda **mate: mate_model_config(tiny_llm_dir, **mate)


@pytest.fixture()
def tiny_mate(tiny_llm_dir) -> MateEmbedder:
    torch.manual_seed(0)
    return MateEmbedder.tiny(mate_model_config(tiny_llm_dir))


@pytest.fixture(scope="session")
def mate_rows(small_world, tiny_llm_dir) -> dict[str, np.ndarray]:
    """12 LONG_TEXT_SCHEMA rows of the small world's val split with the tiny LLM's target vectors, as a numpy batch
    (what Ray Data's iter_batches yields)."""
    world_dir, _ = small_world
    rows = long_text_rows(pq.read_table(world_dir / "val").to_pylist()[:12], seed=0)
    model = MateEmbedder.tiny(mate_model_config(tiny_llm_dir))
    batch = {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}
    for column in ("caption", "long_caption", "document"):
        vectors = model.encode_texts([r[column] for r in rows]).numpy()
        batch[f"{column}_emb"] = np.array(list(vectors), dtype=object)
    return batch
