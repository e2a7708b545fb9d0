"""Routing data: one canonical in-memory form (RoutingTable) and the loaders that produce it."""

from .loading import load_routing_table
from .prices import read_prices_file, validate_prices, write_prices_file
from .routing_table import RoutingTable
from .sources import RoutingSourceError
from .validation import RoutingDataError, discover_model_columns

__all__ = [
    "RoutingDataError",
    "RoutingSourceError",
    "RoutingTable",
    "discover_model_columns",
    "load_routing_table",
    "read_prices_file",
    "validate_prices",
    "write_prices_file",
]
