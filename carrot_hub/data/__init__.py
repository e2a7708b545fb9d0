"""Routing data: one canonical in-memory form (RoutingTable) and the loaders that produce it."""

from .routing_table import RoutingTable

__all__ = ["RoutingTable"]
