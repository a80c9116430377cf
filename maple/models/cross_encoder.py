"""The cross-encoder reranker: a dual encoder's token states joined by a few self-attention layers (our design beside
UniME-V2's MLLM reranker; `maple.models.reranker` has the interface)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from maple.models.config import RerankerConfig
from maple.models.dual_encoder import DualEncoder
from maple.models.reranker import Item, Reranker, is_image, list_size, model_config, reranker_manifest


class CrossEncoderReranker(Reranker):
    """Self-attention over [CLS] + query tokens + candidate tokens, token states from a dual encoder's towers.

    `encoder` is a `DualEncoder`; its tower outputs (last_hidden_state, before pooling) are
    projected to `width`, tagged with a segment embedding (0 query, 1 candidate) and a per-modality embedding, and
    joined by `layers` pre-norm transformer layers. The head reads [CLS]: (N, 2) [Yes, No] logits. A list is scored
    pair by pair: slot logit = logit_Yes − logit_No, so the listwise CE is a softmax over the candidates' scores.

    Residual on the dual encoder (our design, not UniME-V2's, whose reranker is an MLLM): logit_Yes also gets
    `sim_scale · cos(z_q, z_c)`, the towers' own embedding similarity, and the head starts at zero. A fresh reranker
    over a trained embedder therefore starts by ranking exactly as the embedder does, and training learns the
    correction that joint attention can see (attribute binding, relations) rather than relearning retrieval.
    """

    kind = "cross_encoder"

    def __init__(self, encoder: DualEncoder, width: int, layers: int, heads: int):
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
        # A query repeated over its candidates (score(), a list, a server's batch of lists) is encoded once.
        distinct = list({id(q): q for q in queries}.values())  # in first-seen order
        if len(distinct) == len(queries):
            return self._joint_logits(self._tokens(queries), self._tokens(candidates))
        row = {id(q): i for i, q in enumerate(distinct)}
        rows = torch.tensor([row[id(q)] for q in queries], device=self.device)
        q_states, q_mask, q_emb = self._tokens(distinct)
        return self._joint_logits((q_states[rows], q_mask[rows], q_emb[rows]), self._tokens(candidates))

    def list_logits(self, queries: list[Item], candidate_lists: list[list[Item]]) -> torch.Tensor:
        size = list_size(candidate_lists)
        flat_q = [q for q in queries for _ in range(size)]
        flat_c = [c for cands in candidate_lists for c in cands]
        logits = self.pair_logits(flat_q, flat_c)
        return (logits[:, 0] - logits[:, 1]).view(len(queries), size)

    # --- construction ---
    @classmethod
    def tiny(cls, cfg: RerankerConfig) -> "CrossEncoderReranker":
        encoder = DualEncoder.tiny(model_config(cfg, cfg.base_family))
        return cls(encoder, cfg.tiny.hidden_size, cfg.cross_layers, cfg.tiny.num_heads)

    @classmethod
    def over_encoder(cls, path: str, cfg: RerankerConfig) -> "CrossEncoderReranker":
        """Fresh cross layers over a pretrained dual encoder (a maple embedder directory, a CLIP/SigLIP checkpoint)."""
        encoder = DualEncoder.from_pretrained(path, model_config(cfg, cfg.base_family))
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
        path = Path(path)
        manifest = reranker_manifest(path)
        encoder = DualEncoder.from_pretrained(path / "encoder")
        model = cls(encoder, manifest["width"], manifest["layers"], manifest["heads"])
        missing, unexpected = model.load_state_dict(load_file(str(path / "cross.safetensors")), strict=False)
        missing = [k for k in missing if not k.startswith("encoder.")]
        if missing or unexpected:
            raise ValueError(f"{path / 'cross.safetensors'} does not match the cross-encoder: missing {missing}, "
                             f"unexpected {unexpected}")
        return model
