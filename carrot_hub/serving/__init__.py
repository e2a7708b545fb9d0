"""The `carrot serve` gateway: an OpenAI-compatible routing server and the outcome log it learns from."""
