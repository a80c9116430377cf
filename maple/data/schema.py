"""Arrow schemas, defined once. Every stage reads and writes Parquet with one of these.

Images travel as encoded bytes (PNG/JPEG) plus their format, never as pickles.
"""

import pyarrow as pa

# Image-text pairs: the input of every pipeline. `annotation` is the synthetic world's ground truth (JSON:
# objects with shape/colour/size/position and the relations between them); real data leaves it null.
PAIRS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("image_format", pa.string(), nullable=False),  # "png" | "jpeg" | ...
        pa.field("captions", pa.list_(pa.string()), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # e.g. the input shard it was read from
        pa.field("annotation", pa.string(), nullable=True),
    ]
)

# Compositional test (SugarCrepe/Winoground style): one row per (image, typed hard negative caption).
# `negative_image` renders the negative caption's scene where one exists (swap types), for image/group scores.
COMPOSITIONAL_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("image_format", pa.string(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("negative_caption", pa.string(), nullable=False),
        pa.field("negative_type", pa.string(), nullable=False),
        pa.field("negative_image", pa.binary(), nullable=True),
        pa.field("held_out", pa.bool_(), nullable=False),  # the scene uses a (colour, shape) combination held out of training
        pa.field("annotation", pa.string(), nullable=True),
    ]
)

# Rows that could not be used, with the reason; written beside a stage's output. `row` keeps the offending row's
# non-binary fields as JSON so that nothing is lost silently.
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=True),
        pa.field("source", pa.string(), nullable=True),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("row", pa.string(), nullable=True),
    ]
)

# The mining job's output: one row per (query, direction). Candidates on the other modality are named by id
# (`<pair id>` for an image, `<pair id>#<caption index>` for a text); hard negatives carry their content too, so
# training streams one table. Scores are the judge's P(Yes); null where the judge gave no Yes/No logits.
JUDGED_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # "<query id>:<direction>"
        pa.field("direction", pa.string(), nullable=False),  # "t2i" | "i2t"
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("query_text", pa.string(), nullable=True),
        pa.field("query_image", pa.binary(), nullable=True),
        pa.field("positive_id", pa.string(), nullable=False),
        pa.field("positive_text", pa.string(), nullable=True),
        pa.field("positive_image", pa.binary(), nullable=True),
        pa.field("positive_score", pa.float32(), nullable=True),
        pa.field("candidate_ids", pa.list_(pa.string()), nullable=False),
        pa.field("candidate_scores", pa.list_(pa.float32()), nullable=False),
        pa.field("candidate_sims", pa.list_(pa.float32()), nullable=False),  # retrieval cosine similarity
        pa.field("hard_negative_ids", pa.list_(pa.string()), nullable=False),
        pa.field("hard_negative_scores", pa.list_(pa.float32()), nullable=False),
        pa.field("hard_negative_texts", pa.list_(pa.string()), nullable=True),  # i2t
        pa.field("hard_negative_images", pa.list_(pa.binary()), nullable=True),  # t2i
        pa.field("num_false_negatives", pa.int32(), nullable=False),
        pa.field("repeated", pa.bool_(), nullable=False),  # fewer survivors than k: some repeated
        pa.field("fallback", pa.bool_(), nullable=False),  # no survivor: random negatives scored mine.fallback_score
        pa.field("judge_missing", pa.int32(), nullable=False),  # candidates whose judge output lacked the logits
        # Where each candidate came from: "retrieved", or "rewrite:<kind>" (`maple.rewrite`), aligned with
        # candidate_ids. Rewrites have no retrieval similarity (NaN in candidate_sims).
        pa.field("candidate_sources", pa.list_(pa.string()), nullable=False),
        # MAPLE's preference ranking: the paired positive and every judged candidate (retrieved and rewritten), best
        # judge score first (candidates without a score have no place in it); ties keep retrieval order and are ties
        # for RPA. Content beside the ids: texts for i2t rows, images for t2i rows (at most mine.ranking_max).
        pa.field("ranking_ids", pa.list_(pa.string()), nullable=False),
        pa.field("ranking_scores", pa.list_(pa.float32()), nullable=False),
        pa.field("ranking_texts", pa.list_(pa.string()), nullable=True),  # i2t
        pa.field("ranking_images", pa.list_(pa.binary()), nullable=True),  # t2i
        # The rewriter's proposals for this query as it labelled them (unjudged): NegCLIP-style training reads them.
        pa.field("rewrite_texts", pa.list_(pa.string()), nullable=False),
        pa.field("rewrite_kinds", pa.list_(pa.string()), nullable=False),
    ]
)


# The long texts of the MATE recipe (`maple.data.long_text`): one row per image with its short caption, a long
# caption and a document, all true of the scene.
LONG_TEXT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("image", pa.binary()),
        pa.field("caption", pa.string(), nullable=False),  # the first short caption of the pair (the VLM's window fits)
        pa.field("long_caption", pa.string(), nullable=False),
        pa.field("document", pa.string(), nullable=False),
        pa.field("annotation", pa.string()),  # the scene (Scene.to_json)
    ]
)

# Frozen encoders' token features (PAL's feature cache, `maple.data.features`): one row per image-text pair.
FEATURES_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("image_tokens", pa.list_(pa.float16()), nullable=False),  # (n, d_x) row-major; n·d_x values
    pa.field("image_token_count", pa.int32(), nullable=False),  # n
    pa.field("captions", pa.list_(pa.string()), nullable=False),
    pa.field("caption_tokens", pa.list_(pa.list_(pa.float16())), nullable=False),  # per caption (m_j, d_y), real tokens
    pa.field("caption_token_counts", pa.list_(pa.int32()), nullable=False),  # m_j
    pa.field("source", pa.string(), nullable=True),  # the input shard
    pa.field("annotation", pa.string(), nullable=True),  # the synthetic world's scene JSON (segmentation ground truth)
])

# A search index's documents (`maple.serving.search_index`): row i is the candidate at index position i.
DOCUMENTS_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("text", pa.string(), nullable=True),  # text corpora
    pa.field("image", pa.binary(), nullable=True),  # image corpora: encoded bytes (PNG/JPEG)
    pa.field("payload", pa.string(), nullable=False),  # JSON object returned with each hit
])

# Between the mining stages (`maple.stages.mining`): the pairs' content by id, and one row per query.
CONTENT_SCHEMA = pa.schema([pa.field("id", pa.string()), pa.field("image", pa.binary()),
                            pa.field("captions", pa.list_(pa.string())), pa.field("annotation", pa.string())])
QUERY_SCHEMA = pa.schema([
    pa.field("id", pa.string()), pa.field("direction", pa.string()), pa.field("query_id", pa.string()),
    pa.field("query_emb", pa.list_(pa.float32())), pa.field("positive_id", pa.string()),
    pa.field("positive_ids", pa.list_(pa.string())), pa.field("shard", pa.string()),
])


def empty_table(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()
