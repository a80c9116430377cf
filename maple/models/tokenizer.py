"""A word-level tokenizer for the tiny random twins (tests, CPU demo), built offline from a word list.

Real checkpoints bring their own tokenizer; the twins need one that loads without a hub. Its vocabulary is a fixed
list that covers the synthetic world's default grammar (shapes, colours, sizes, relations) and the prompts around
it; a word outside it maps to [UNK]. A world with other words passes them as `words`.
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
# Words of the world's grammar and of the prompts around it; a small general list keeps other text from collapsing
# entirely to [UNK]. The ids follow this order: changing it changes every tiny twin's embedding table.
GENERAL_WORDS = (
    "a an and the of is are to in on with there at near next by it its this that these those one two three "
    "image picture photo caption query candidate document text shows showing contains object objects scene background "
    "left right above below top bottom middle center corner small large big tiny colour color shape "
    "red green blue yellow purple white orange cyan black grey gray pink brown "
    "circle square triangle diamond star cross ring rectangle hexagon "
    "yes no please evaluate whether meets requirements if does respond with doesn't t i will provide you query: "
    "candidates: candidate: , . : ' ( ) ? !"
).split()


def vocabulary(extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The twins' words: `GENERAL_WORDS`, then `extra` (each split on spaces), lower-cased, first occurrence kept."""
    seen: dict[str, None] = {}
    for w in [*GENERAL_WORDS, *(word for item in extra for word in item.split())]:
        seen.setdefault(w.lower(), None)
    return list(seen)


def build_word_tokenizer(words: list[str] | None = None, max_length: int = 64,
                         special_tokens: list[str] | None = None) -> PreTrainedTokenizerFast:
    """Lower-casing, whitespace/punctuation split, one id per word, `[EOS]` appended (CLIP pools at EOS).

    `special_tokens` (e.g. Qwen2-VL's `<|image_pad|>`) get their own ids and are matched verbatim before the
    lower-casing and the split, so `<|image_pad|><|image_pad|>` is two tokens, not punctuation.
    """
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in [*(words or vocabulary()), *(special_tokens or [])]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if special_tokens:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    tok.post_processor = processors.TemplateProcessing(
        single="$A [EOS]", pair="$A [EOS] $B [EOS]", special_tokens=[("[EOS]", vocab["[EOS]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]",
        model_max_length=max_length,
    )
