"""Adapters between outside things and the core (installed as ``x2adapters``):
width adapters, checkpoint converters, parameter-efficient domain adapters."""
