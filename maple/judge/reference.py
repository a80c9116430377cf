"""The reference judge: the synthetic world's exact ground-truth score, for tests and experiments only.

It is not a model. For a (text, image) pair it returns `maple.data.synth.reference_score(caption, scene, ε)`
(ε = `false_fact_factor`), the scene read from the image side's annotation (the world's JSON); it refuses pairs
without one (real data). Optional noise stands in for an imperfect judge in the demo's judge-noise sweep: with
probability `noise_flip_rate` a score becomes 1 − score, then Gaussian noise of std `noise_std` is added and the result clipped to [0, 1]. The noise is a
function of (noise_seed, query id, candidate id), so batching and re-runs do not change it.
"""

from __future__ import annotations

import hashlib

import numpy as np

from maple.data.synth import Scene, reference_score
from maple.judge.base import JudgeBackend, Pairs, num_pairs
from maple.judge.config import JudgeConfig


class ReferenceDataError(ValueError):
    """A pair the reference judge cannot score: it needs one caption and one annotated image."""


class ReferenceJudge(JudgeBackend):
    name = "reference"
    sees_images = True  # through the annotation, not the pixels

    def __init__(self, cfg: JudgeConfig | None = None):
        cfg = cfg or JudgeConfig()
        self.flip_rate, self.noise_std, self.seed = cfg.noise_flip_rate, cfg.noise_std, cfg.noise_seed
        self.false_fact_factor = cfg.false_fact_factor

    def score(self, pairs: Pairs) -> np.ndarray:
        n = num_pairs(pairs)
        out = np.empty(n, dtype=np.float32)
        for i in range(n):
            caption, scene = self._caption_and_scene(pairs, i)
            out[i] = reference_score(caption, Scene.from_json(scene), self.false_fact_factor)
        if self.flip_rate > 0 or self.noise_std > 0:
            out = self._noisy(out, pairs)
        return out

    @staticmethod
    def _caption_and_scene(pairs: Pairs, i: int) -> tuple[str, str]:
        q_text, c_text = pairs["query_text"][i], pairs["candidate_text"][i]
        q_scene, c_scene = pairs["query_annotation"][i], pairs["candidate_annotation"][i]
        name = f"pair ({pairs['query_id'][i]!r}, {pairs['candidate_id'][i]!r})"
        if q_text and c_scene and not c_text:
            return q_text, c_scene
        if c_text and q_scene and not q_text:
            return c_text, q_scene
        if (q_text and c_text) or (pairs["query_image"][i] is not None and pairs["candidate_image"][i] is not None):
            raise ReferenceDataError(f"reference judge: {name} has the same modality on both sides; it scores a "
                                     "caption against an annotated image only")
        raise ReferenceDataError(
            f"reference judge: {name} has an image without a synthetic-world annotation; the reference judge only "
            "scores the synthetic world (maple.data.synth). Use judge.backend=hf or vllm for real data")

    def _noisy(self, scores: np.ndarray, pairs: Pairs) -> np.ndarray:
        out = scores.astype(np.float64)
        for i in range(len(out)):
            key = f"{pairs['query_id'][i]}\x00{pairs['candidate_id'][i]}".encode()
            digest = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
            rng = np.random.default_rng([self.seed, digest])
            flip, noise = rng.random(), rng.normal()
            if flip < self.flip_rate:
                out[i] = 1.0 - out[i]
            out[i] = np.clip(out[i] + self.noise_std * noise, 0.0, 1.0)
        return out.astype(np.float32)
