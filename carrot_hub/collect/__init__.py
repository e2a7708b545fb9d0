"""`carrot collect`: routing data for your own models.

A prompt set × the user's upstreams → answers (stored as they arrive) → scores → a SPROUT-layout
routing table that `carrot train` and `carrot add-model` read unchanged. See `collecting.collect`.
"""

from .collecting import CollectError, CollectResult, collect

__all__ = ["CollectError", "CollectResult", "collect"]
