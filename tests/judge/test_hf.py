import numpy as np
import pytest
import torch

from maple.data.synth import Obj, Scene, encode_png, render_scene
from maple.judge.base import make_pairs
from maple.judge.config import JudgeConfig
from maple.judge.hf import HFJudge
from maple.judge.prompt import judge_prompt, side_text


def test_hf_batched_scores_agree_with_a_direct_transformers_computation(tiny_llama, text_pairs, direct_scores):
    got = HFJudge(JudgeConfig(backend="hf", model=tiny_llama, batch_size=5)).score(text_pairs)
    np.testing.assert_allclose(got, direct_scores, rtol=0, atol=5e-6)  # measured: agree to 5e-7
    assert np.ptp(direct_scores) > 1e-3  # the random model does tell the pairs apart


def test_hf_scores_do_not_depend_on_batching_or_padding(tiny_llama, text_pairs):
    one = HFJudge(JudgeConfig(backend="hf", model=tiny_llama, batch_size=1)).score(text_pairs)
    many = HFJudge(JudgeConfig(backend="hf", model=tiny_llama, batch_size=12)).score(text_pairs)
    np.testing.assert_allclose(one, many, atol=1e-5)


def test_hf_gives_nan_not_a_score_to_a_prompt_longer_than_max_model_len(tiny_llama, text_pairs):
    pairs = {k: list(v[:2]) for k, v in text_pairs.items()}
    pairs["candidate_text"][1] = " and ".join(["a small red circle"] * 40)
    got = HFJudge(JudgeConfig(backend="hf", model=tiny_llama, max_model_len=80)).score(pairs)
    assert np.isfinite(got[0]) and np.isnan(got[1])


def test_hf_multimodal_judge_scores_image_pairs_like_a_direct_llava_forward(tiny_llava):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    image = encode_png(render_scene(Scene((Obj("circle", "red", "small", 0, 0),)), 64)[0])
    other = encode_png(render_scene(Scene((Obj("square", "blue", "large", 1, 1),)), 64)[0])
    pairs = make_pairs([
        {"query_id": "q", "query_text": "a small red circle", "candidate_id": "a", "candidate_image": image},
        {"query_id": "q", "query_text": "a small red circle", "candidate_id": "b", "candidate_image": other},
        {"query_id": "i", "query_image": image, "candidate_id": "t", "candidate_text": "a large blue square"},
    ])
    got = HFJudge(JudgeConfig(backend="hf", model=tiny_llava, batch_size=3)).score(pairs)

    processor = AutoProcessor.from_pretrained(tiny_llava)
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava, dtype=torch.float32).eval()
    yes, no = processor.tokenizer.convert_tokens_to_ids(["yes", "no"])
    from maple.data.images import decode_image

    for i, (q_text, q_img, c_text, c_img) in enumerate(zip(pairs["query_text"], pairs["query_image"],
                                                           pairs["candidate_text"], pairs["candidate_image"])):
        text = judge_prompt(side_text(q_text, q_img is not None, "<image>"),
                            side_text(c_text, c_img is not None, "<image>")).text
        images = [decode_image(b) for b in (q_img, c_img) if b is not None]
        inputs = processor(text=[text], images=images, return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1].double()
        expected = torch.softmax(logits[[yes, no]], dim=0)[0].item()
        assert got[i] == pytest.approx(expected, abs=5e-6)
    assert got[0] != pytest.approx(got[1], abs=1e-6)  # the image reaches the score
