"""Preference data by rewriting (MAPLE's automatic preference data construction; NegCLIP and SugarCrepe are the prior
art for rule-based minimal pairs): for a query's paired caption, propose captions that differ from it in controlled,
graded ways, and rewordings that keep its meaning. The rewriter only proposes: every rewrite goes through the same
judge as the retrieved candidates, and only the judge's score labels it (`maple.stages.mining`).

Backends (`backends.py`): `grammar` (the synthetic world's grammar, exact edits), `hf` and `vllm` (a text LLM asked
with a documented prompt, its answer parsed; `llm.py`)."""
