from maple.section import Section


class ServeConfig(Section):
    host: str = "127.0.0.1"
    port: int = 8000
    embedder: str | None = None  # checkpoint dir, models:/name/version, or None for the tiny demo model
    reranker: str | None = None
    index: str | None = None
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.01
    max_inputs: int = 256
    max_text_chars: int = 8192
    max_image_pixels: int = 16_000_000
    max_body_bytes: int = 32_000_000
    allow_image_urls: bool = False
