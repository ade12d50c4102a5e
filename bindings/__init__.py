"""Bindings: the domain vocabularies that contracts name in ``metadata.binding``."""
