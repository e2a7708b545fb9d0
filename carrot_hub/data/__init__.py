"""Routing data: one canonical in-memory form (RoutingTable) and the loaders that produce it."""

from .dataset_publishing import HubAuthError, check_dataset_folder, push_routing_dataset
from .loading import load_routing_table
from .packaged import DEFAULT_TABLE, UnknownTableError, packaged_table_dir, packaged_tables, resolve_table_source
from .logs import convert_routing_logs, read_routing_logs
from .prices import read_prices_file, validate_prices, write_prices_file
from .routing_table import RoutingTable
from .sources import MissingSplitError, RoutingSourceError
from .splitting import split_indices, split_table
from .validation import RoutingDataError, discover_model_columns
from .writing import dataset_card, write_sprout_dataset

__all__ = [
    "DEFAULT_TABLE",
    "UnknownTableError",
    "packaged_table_dir",
    "packaged_tables",
    "resolve_table_source",
    "HubAuthError",
    "RoutingDataError",
    "MissingSplitError",
    "RoutingSourceError",
    "RoutingTable",
    "check_dataset_folder",
    "convert_routing_logs",
    "dataset_card",
    "discover_model_columns",
    "load_routing_table",
    "push_routing_dataset",
    "read_prices_file",
    "read_routing_logs",
    "split_indices",
    "split_table",
    "validate_prices",
    "write_prices_file",
    "write_sprout_dataset",
]
