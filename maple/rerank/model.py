"""Rerankers (UniME-V2, arXiv 2510.13515): score (query, candidate) pairs jointly, after the embedder's retrieval.

One interface over two kinds:

- `GenerativeReranker`: a multimodal LLM (Qwen2-VL family; a tiny random twin for tests) reads the judge's Yes/No
  prompt for one pair and answers "Yes"/"No", or reads a list prompt and answers "(k)", the slot of the best candidate.
  Its logits at the answer position are read directly (one forward pass, no sampling).
- `CrossEncoderReranker`: the token states of a dual encoder's two towers (CLIP / SigLIP), projected to one width and
  joined by a few self-attention layers over [CLS] + query tokens + candidate tokens (so every query token attends to
  every candidate token); a head on [CLS] gives the [Yes, No] logits.

Both give, for a pair, the [Yes, No] logits (`pair_logits`, what the pairwise loss trains) and, for a list, one logit
per slot (`list_logits`, what the listwise loss trains). `score(query, candidates)` is the no-grad convenience for
evaluation and serving: logit_Yes − logit_No per candidate (the log-odds of P(Yes); higher = more relevant).

A query or candidate is a text (`str`) or an image (`PIL.Image.Image`), in any combination.

A saved reranker is a directory: `maple_reranker.json` (kind + settings) beside the weights (safetensors).
`load_reranker(spec)` reads it back from a directory or an MLflow `models:/name/version`.
"""

from __future__ import annotations

import copy
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Union

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from maple.rerank.config import RerankerConfig

MANIFEST = "maple_reranker.json"
Item = Union[str, Image.Image]


def is_image(item: Item) -> bool:
    return isinstance(item, Image.Image)


class Reranker(nn.Module, ABC):
    """Base of both kinds. Subclasses set `kind` and implement the abstract methods."""

    kind: ClassVar[str] = ""

    @abstractmethod
    def pair_logits(self, queries: list[Item], candidates: list[Item]) -> torch.Tensor:
        """[Yes, No] logits for each pair (queries[i], candidates[i]): (N, 2), differentiable."""

    @abstractmethod
    def list_logits(self, queries: list[Item], candidate_lists: list[list[Item]]) -> torch.Tensor:
        """One logit per slot of each query's candidate list: (N, x+1), differentiable; all lists the same length."""

    @abstractmethod
    def save_pretrained(self, path: str | Path) -> None:
        ...

    @classmethod
    @abstractmethod
    def from_pretrained(cls, path: str | Path, cfg: RerankerConfig | None = None) -> "Reranker":
        ...

    def forward(self, queries: list[Item], candidates: list[Item]) -> torch.Tensor:
        return self.pair_logits(queries, candidates)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def score(self, query: Item, candidates: list[Item], batch_size: int = 32) -> list[float]:
        """logit_Yes − logit_No for (query, c) for every candidate, in order; higher = more relevant."""
        was_training = self.training
        self.eval()
        out: list[float] = []
        for i in range(0, len(candidates), batch_size):
            chunk = list(candidates[i:i + batch_size])
            logits = self.pair_logits([query] * len(chunk), chunk).float()
            out.extend((logits[:, 0] - logits[:, 1]).cpu().tolist())
        self.train(was_training)
        return out

    def _write_manifest(self, path: Path, settings: dict[str, Any]) -> None:
        path.mkdir(parents=True, exist_ok=True)
        (path / MANIFEST).write_text(json.dumps({"kind": self.kind, **settings}, indent=1))


def _read_manifest(path: str | Path) -> dict[str, Any]:
    manifest = Path(path) / MANIFEST
    return json.loads(manifest.read_text()) if manifest.exists() else {}


# --- (b) the cross-encoder -------------------------------------------------------------------------------------------


class CrossEncoderReranker(Reranker):
    """Self-attention over [CLS] + query tokens + candidate tokens, token states from a dual encoder's towers.

    `encoder` is a `maple.models.dual_encoder.DualEncoder`; its tower outputs (last_hidden_state, before pooling) are
    projected to `width`, tagged with a segment embedding (0 query, 1 candidate) and a per-modality embedding, and
    joined by `layers` pre-norm transformer layers. The head reads [CLS]: (N, 2) [Yes, No] logits. A list is scored
    pair by pair: slot logit = logit_Yes − logit_No, so the listwise CE is a softmax over the candidates' scores.

    Residual on the dual encoder (our design, not UniME-V2's, whose reranker is an MLLM): logit_Yes also gets
    `sim_scale · cos(z_q, z_c)`, the towers' own embedding similarity, and the head starts at zero. A fresh reranker
    over a trained embedder therefore starts by ranking exactly as the embedder does, and training learns the
    correction that joint attention can see (attribute binding, relations) rather than relearning retrieval.
    """

    kind = "cross_encoder"

    def __init__(self, encoder, width: int, layers: int, heads: int):
        super().__init__()
        self.encoder = encoder
        cfg = encoder.model.config
        self.width, self.layers, self.heads = width, layers, heads
        self.text_proj = nn.Linear(cfg.text_config.hidden_size, width)
        self.image_proj = nn.Linear(cfg.vision_config.hidden_size, width)
        self.segment = nn.Embedding(2, width)
        self.modality = nn.Embedding(2, width)  # 0 text, 1 image
        self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.cross = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 2)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.sim_scale = nn.Parameter(torch.tensor([10.0]))  # shape (1,): DeepSpeed cannot broadcast 0-dim tensors

    # --- token states of a mixed list of texts and images ---
    def _tokens(self, items: list[Item]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, L, width) projected token states, (N, L) bool mask of real tokens and (N, E) the towers' normalised
        embeddings, for texts and images alike."""
        device = self.device
        text_at = [i for i, x in enumerate(items) if not is_image(x)]
        image_at = [i for i, x in enumerate(items) if is_image(x)]
        parts: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        if text_at:
            enc = self.encoder.tokenize([items[i] for i in text_at])
            ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
            kwargs = {"attention_mask": mask} if self.encoder.family == "clip" else {}
            out = self.encoder.model.get_text_features(input_ids=ids, **kwargs)
            states = self.text_proj(out.last_hidden_state) + self.modality.weight[0]
            emb = F.normalize(out.pooler_output.float(), dim=-1)
            for row, i in enumerate(text_at):
                parts[i] = (states[row], mask[row].bool(), emb[row])
        if image_at:
            pixels = self.encoder.preprocess([items[i] for i in image_at])["pixel_values"].to(device)
            out = self.encoder.model.get_image_features(pixel_values=pixels)
            states = self.image_proj(out.last_hidden_state) + self.modality.weight[1]
            emb = F.normalize(out.pooler_output.float(), dim=-1)
            for row, i in enumerate(image_at):
                parts[i] = (states[row], torch.ones(states.shape[1], dtype=torch.bool, device=device), emb[row])
        length = max(p[0].shape[0] for p in parts.values())
        states = torch.stack([F.pad(parts[i][0], (0, 0, 0, length - parts[i][0].shape[0])) for i in range(len(items))])
        mask = torch.stack([F.pad(parts[i][1], (0, length - parts[i][1].shape[0])) for i in range(len(items))])
        return states, mask, torch.stack([parts[i][2] for i in range(len(items))])

    def _joint_logits(self, q: tuple[torch.Tensor, ...], c: tuple[torch.Tensor, ...]) -> torch.Tensor:
        (q_states, q_mask, q_emb), (c_states, c_mask, c_emb) = q, c
        n = c_states.shape[0]
        q_states, q_mask = q_states.expand(n, -1, -1), q_mask.expand(n, -1)
        x = torch.cat([self.cls.expand(n, -1, -1), q_states + self.segment.weight[0], c_states + self.segment.weight[1]],
                      dim=1)
        real = torch.cat([torch.ones(n, 1, dtype=torch.bool, device=x.device), q_mask, c_mask], dim=1)
        x = self.cross(x, src_key_padding_mask=~real)
        logits = self.head(self.norm(x[:, 0]))
        residual = self.sim_scale * (q_emb * c_emb).sum(-1)  # the dual encoder's cosine similarity, scaled
        return logits + torch.stack([residual, torch.zeros_like(residual)], dim=1).to(logits.dtype)

    def pair_logits(self, queries: list[Item], candidates: list[Item]) -> torch.Tensor:
        if len(queries) != len(candidates):
            raise ValueError(f"pair_logits: {len(queries)} queries but {len(candidates)} candidates")
        # One query repeated (score(), a list) is encoded once.
        if all(q is queries[0] for q in queries):
            return self._joint_logits(self._tokens(queries[:1]), self._tokens(candidates))
        return self._joint_logits(self._tokens(queries), self._tokens(candidates))

    def list_logits(self, queries: list[Item], candidate_lists: list[list[Item]]) -> torch.Tensor:
        size = _list_size(candidate_lists)
        flat_q = [q for q in queries for _ in range(size)]
        flat_c = [c for cands in candidate_lists for c in cands]
        logits = self.pair_logits(flat_q, flat_c)
        return (logits[:, 0] - logits[:, 1]).view(len(queries), size)

    # --- construction ---
    @classmethod
    def tiny(cls, cfg: RerankerConfig) -> "CrossEncoderReranker":
        from maple.models.dual_encoder import DualEncoder

        encoder = DualEncoder.tiny(_model_config(cfg, cfg.base_family))
        return cls(encoder, cfg.tiny.hidden_size, cfg.cross_layers, cfg.tiny.num_heads)

    @classmethod
    def over_encoder(cls, path: str, cfg: RerankerConfig) -> "CrossEncoderReranker":
        """Fresh cross layers over a pretrained dual encoder (a maple embedder directory or a CLIP/SigLIP checkpoint)."""
        from maple.models.embedder import load_embedder

        encoder = load_embedder(path, _model_config(cfg, cfg.base_family))
        width = encoder.model.config.text_config.hidden_size
        heads = encoder.model.config.text_config.num_attention_heads
        return cls(encoder, width, cfg.cross_layers, heads)

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        self.encoder.save_pretrained(path / "encoder")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items() if not k.startswith("encoder.")}
        path.mkdir(parents=True, exist_ok=True)
        save_file(state, str(path / "cross.safetensors"))
        self._write_manifest(path, {"width": self.width, "layers": self.layers, "heads": self.heads})

    @classmethod
    def from_pretrained(cls, path: str | Path, cfg: RerankerConfig | None = None) -> "CrossEncoderReranker":
        from maple.models.embedder import load_embedder

        path = Path(path)
        manifest = _read_manifest(path)
        model = cls(load_embedder(path / "encoder"), manifest["width"], manifest["layers"], manifest["heads"])
        missing, unexpected = model.load_state_dict(load_file(str(path / "cross.safetensors")), strict=False)
        missing = [k for k in missing if not k.startswith("encoder.")]
        if missing or unexpected:
            raise ValueError(f"{path / 'cross.safetensors'} does not match the cross-encoder: missing {missing}, "
                             f"unexpected {unexpected}")
        return model


# --- (a) the generative MLLM reranker --------------------------------------------------------------------------------

# The list prompt (our wording; UniME-V2 trains a "(k)" answer over a list). Its instruction, the query and the
# numbered candidates come first; the answer "(" is primed so the next token is the slot's digit.
LIST_PROMPT = ("I will provide you with a query and {n} candidates. Please select the candidate that best meets the "
               "requirements of the query, and respond with its number in parentheses, such as (1). Query: {query}, "
               "Candidates: {candidates}.")
LIST_ANSWER_PREFIX = "("
MAX_LIST_SIZE = 9  # slots are single digits "1".."9": one token each in Qwen2's tokenizer (it splits numbers)
# Words of the prompts above and of the judge's prompt that the tiny twin's word tokenizer must know.
GENERATIVE_WORDS = ["select", "best", "number", "parentheses", "such", "as", "respond", "its", "candidates",
                    *[str(k) for k in range(1, MAX_LIST_SIZE + 1)]]


class GenerativeReranker(Reranker):
    """A multimodal LLM with an LM head (`Qwen2VLForConditionalGeneration`) answering Yes/No or "(k)".

    Only the answer position's logits of the few answer tokens are computed (the final hidden state times those rows
    of the LM head), not the whole vocabulary. Prompts are right-padded; the answer position is the last real token.
    """

    kind = "generative"

    def __init__(self, model, tokenizer, image_processor, use_chat_template: bool = True):
        super().__init__()
        from maple.judge.prompt import answer_token_ids
        from maple.models.mllm import IMAGE_PAD

        self.model, self.tokenizer, self.image_processor = model, tokenizer, image_processor
        self.use_chat_template = use_chat_template and bool(getattr(tokenizer, "chat_template", None))
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        if self.image_token_id != model.config.image_token_id:
            raise ValueError(f"tokenizer maps {IMAGE_PAD} to {self.image_token_id} but the model config's "
                             f"image_token_id is {model.config.image_token_id}; tokenizer and weights do not match")
        self.yes_no_ids = list(answer_token_ids(tokenizer, source="reranker.name_or_path"))
        self.slot_ids = [self._single_token(str(k)) for k in range(1, MAX_LIST_SIZE + 1)]

    def _single_token(self, word: str) -> int:
        ids = self.tokenizer.encode(word, add_special_tokens=False)
        if len(ids) != 1 or ids[0] == self.tokenizer.unk_token_id:
            raise ValueError(f"the reranker's tokenizer does not have {word!r} as one known token (got ids {ids}); "
                             f"a generative reranker reads its answer from that token's logit")
        return ids[0]

    # --- prompts ---
    def _render(self, item: Item, images: list[Image.Image]) -> str:
        from maple.models.mllm import IMAGE_PAD, VISION_END, VISION_START

        if is_image(item):
            images.append(item)
            return f"{VISION_START}{IMAGE_PAD}{VISION_END}"
        return item

    def _chat(self, prompt: str) -> str:
        from maple.judge.prompt import apply_chat

        return apply_chat(self.tokenizer, prompt, self.use_chat_template)

    def pair_prompt(self, query: Item, candidate: Item, images: list[Image.Image]) -> str:
        from maple.judge.prompt import judge_prompt

        return self._chat(judge_prompt(self._render(query, images), self._render(candidate, images)).text)

    def list_prompt(self, query: Item, candidates: list[Item], images: list[Image.Image]) -> str:
        q = self._render(query, images)
        listed = ", ".join(f"({k + 1}) {self._render(c, images)}" for k, c in enumerate(candidates))
        text = self._chat(LIST_PROMPT.format(n=len(candidates), query=q, candidates=listed))
        # The answer "(" is primed so that the next token is the slot's digit; after a space where there is no chat
        # template, so that the plain prompt's final "." and the "(" stay two tokens.
        return text + ("" if self.use_chat_template else " ") + LIST_ANSWER_PREFIX

    def _encode(self, prompts: list[str], images: list[Image.Image]) -> dict[str, torch.Tensor]:
        from maple.models.mllm import IMAGE_PAD

        inputs: dict[str, torch.Tensor] = {}
        if images:
            vision = self.image_processor(images=images, return_tensors="pt")
            counts = iter((vision["image_grid_thw"].prod(-1) // self.image_processor.merge_size ** 2).tolist())
            # Each <|image_pad|> becomes one token per merged patch group, images in order of appearance.
            expanded = []
            for p in prompts:
                pieces = p.split(IMAGE_PAD)
                expanded.append(pieces[0] + "".join(IMAGE_PAD * next(counts) + rest for rest in pieces[1:]))
            prompts = expanded
            inputs = {"pixel_values": vision["pixel_values"], "image_grid_thw": vision["image_grid_thw"]}
        enc = self.tokenizer(prompts, padding=True, padding_side="right", add_special_tokens=False,
                             return_tensors="pt")
        inputs.update(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        inputs["mm_token_type_ids"] = (enc["input_ids"] == self.image_token_id).int()
        return {k: v.to(self.device) for k, v in inputs.items()}

    def _answer_logits(self, inputs: dict[str, torch.Tensor], token_ids: list[int]) -> torch.Tensor:
        from maple.models.mllm import pool_hidden_states

        hidden = self.model.model(use_cache=False, **inputs).last_hidden_state
        last = pool_hidden_states(hidden, inputs["attention_mask"], "last")  # (N, D): the answer position
        head = self.model.get_output_embeddings()
        return F.linear(last, head.weight[token_ids], None if head.bias is None else head.bias[token_ids])

    def pair_logits(self, queries: list[Item], candidates: list[Item]) -> torch.Tensor:
        if len(queries) != len(candidates):
            raise ValueError(f"pair_logits: {len(queries)} queries but {len(candidates)} candidates")
        images: list[Image.Image] = []
        prompts = [self.pair_prompt(q, c, images) for q, c in zip(queries, candidates)]
        return self._answer_logits(self._encode(prompts, images), self.yes_no_ids)

    def list_logits(self, queries: list[Item], candidate_lists: list[list[Item]]) -> torch.Tensor:
        size = _list_size(candidate_lists)
        if size > MAX_LIST_SIZE:
            raise ValueError(f"a generative list holds at most {MAX_LIST_SIZE} candidates (single-digit slots); got "
                             f"{size}: lower reranker.listwise_size")
        images: list[Image.Image] = []
        prompts = [self.list_prompt(q, cands, images) for q, cands in zip(queries, candidate_lists)]
        return self._answer_logits(self._encode(prompts, images), self.slot_ids[:size])

    # --- construction ---
    @classmethod
    def tiny(cls, cfg: RerankerConfig) -> "GenerativeReranker":
        """A randomly initialised Qwen2-VL twin with an LM head: the embedder twin's architecture
        (`MLLMEmbedder.tiny`) over a word vocabulary that also holds the prompts' words and the answer tokens."""
        from transformers import Qwen2VLForConditionalGeneration

        from maple.models.mllm import IMAGE_PAD, PROMPT_WORDS, VIDEO_PAD, VISION_END, VISION_START, MLLMEmbedder
        from maple.models.tokenizer import build_word_tokenizer, world_words

        base = MLLMEmbedder.tiny(_model_config(cfg, "qwen2vl"))
        specials = [VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD]
        tokenizer = build_word_tokenizer([*world_words(), *PROMPT_WORDS, *GENERATIVE_WORDS],
                                         max_length=base.tokenizer.model_max_length, special_tokens=specials)
        ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in specials}
        config = copy.deepcopy(base.model.config)
        config.text_config.vocab_size = len(tokenizer)
        config.image_token_id, config.video_token_id = ids[IMAGE_PAD], ids[VIDEO_PAD]
        config.vision_start_token_id, config.vision_end_token_id = ids[VISION_START], ids[VISION_END]
        config.tie_word_embeddings = False
        return cls(Qwen2VLForConditionalGeneration(config), tokenizer, base.image_processor)

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)
        self._write_manifest(path, {"use_chat_template": self.use_chat_template})

    @classmethod
    def from_pretrained(cls, path: str | Path, cfg: RerankerConfig | None = None) -> "GenerativeReranker":
        """A maple directory or an MLLM checkpoint by name or path (e.g. Qwen/Qwen2-VL-2B-Instruct)."""
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

        remote = bool(cfg and cfg.trust_remote_code)
        manifest = _read_manifest(path)
        model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=remote)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=remote)
        # The PIL backend: Qwen2-VL's default image processor needs torchvision.
        processor = AutoImageProcessor.from_pretrained(path, backend="pil", trust_remote_code=remote)
        return cls(model, tokenizer, processor, manifest.get("use_chat_template", True))


# --- building and loading --------------------------------------------------------------------------------------------

KINDS: dict[str, type[Reranker]] = {"generative": GenerativeReranker, "cross_encoder": CrossEncoderReranker}


def _list_size(candidate_lists: list[list[Item]]) -> int:
    sizes = {len(c) for c in candidate_lists}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"list_logits needs non-empty candidate lists of one length; got lengths {sorted(sizes)}")
    return sizes.pop()


def _model_config(cfg: RerankerConfig, family: str):
    from maple.models.config import ModelConfig

    return ModelConfig(family=family, image_size=cfg.image_size, max_text_tokens=cfg.max_text_tokens, tiny=cfg.tiny,
                       trust_remote_code=cfg.trust_remote_code)


def build_reranker(cfg: RerankerConfig, seed: int = 0) -> Reranker:
    """The configured reranker: a checkpoint by `cfg.name_or_path`, or the kind's tiny random twin when none is given.

    A cross-encoder over a plain dual encoder (a maple embedder directory or a CLIP/SigLIP checkpoint) gets fresh
    cross layers over those towers."""
    if cfg.name_or_path:
        path = cfg.name_or_path
        if _read_manifest(path) or cfg.kind == "generative":
            return load_reranker(path, cfg)
        torch.manual_seed(seed)
        return CrossEncoderReranker.over_encoder(path, cfg)
    torch.manual_seed(seed)
    return KINDS[cfg.kind].tiny(cfg)  # type: ignore[attr-defined]


def load_reranker(spec: str | Path, cfg: RerankerConfig | None = None) -> Reranker:
    """A saved reranker from a directory or an MLflow `models:/name/version` (or `runs:/`) URI.

    A directory without `maple_reranker.json` loads as a Hugging Face MLLM checkpoint (the generative kind)."""
    from maple.tracking import model_dir

    local = Path(model_dir(str(spec)))
    manifest = _read_manifest(local)
    kind = manifest.get("kind") or (cfg.kind if cfg else "generative")
    if kind not in KINDS:
        raise ValueError(f"{local / MANIFEST}: unknown reranker kind {kind!r}; known: {sorted(KINDS)}")
    model = KINDS[kind].from_pretrained(local, cfg)
    return model.eval()
