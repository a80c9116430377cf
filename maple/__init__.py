"""maple: image-text embedding models trained with a multimodal LLM as the judge, on Ray."""

__version__ = "0.1.0"
