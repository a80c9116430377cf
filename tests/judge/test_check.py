"""A judge that cannot run fails at start, with a message naming the key and what to do."""

import pytest

from maple.judge.backends import check_judge
from maple.judge.config import JudgeConfig
from maple.judge.prompt import JudgeSetupError
from maple.models.tiny_judge import tiny_judge_tokenizer


def test_a_missing_model_path_fails_at_start(tmp_path):
    cfg = JudgeConfig(backend="hf", model=str(tmp_path / "no-such-judge"))
    with pytest.raises(JudgeSetupError, match="judge.model=.*no-such-judge.*no such folder"):
        check_judge(cfg, needs_images=False, available_gpus=0)


def test_an_unset_model_fails_at_start():
    with pytest.raises(JudgeSetupError, match="needs judge.model"):
        check_judge(JudgeConfig(backend="vllm"), needs_images=False, available_gpus=0)


def test_a_judge_whose_tokenizer_lacks_yes_and_no_fails_at_start(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from maple.models.tokenizer import build_word_tokenizer

    tok = build_word_tokenizer(["query", "candidate", "red", "circle"])
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=1, num_key_value_heads=1)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(JudgeSetupError, match="'Yes' is not a single token"):
        check_judge(JudgeConfig(backend="hf", model=str(tmp_path)), needs_images=False, available_gpus=0)


def test_a_text_only_judge_asked_to_judge_images_fails_at_start(tiny_llama):
    with pytest.raises(JudgeSetupError, match="text-only model .* cannot see the image"):
        check_judge(JudgeConfig(backend="hf", model=tiny_llama), needs_images=True, available_gpus=0)


def test_a_config_asking_for_gpus_that_do_not_exist_fails_at_start():
    cfg = JudgeConfig(backend="reference", num_actors=2, gpus_per_actor=1.0)
    with pytest.raises(JudgeSetupError, match="asks for 2 GPUs but the Ray cluster has 0"):
        check_judge(cfg, needs_images=True, available_gpus=0)


def test_a_working_judge_passes_the_check_and_reports_its_answer_tokens(tiny_llama):
    facts = check_judge(JudgeConfig(backend="hf", model=tiny_llama), needs_images=False, available_gpus=0)
    tok = tiny_judge_tokenizer()
    assert facts["yes_token_id"] == tok.convert_tokens_to_ids("yes")
    assert facts["no_token_id"] == tok.convert_tokens_to_ids("no") and facts["multimodal"] is False
