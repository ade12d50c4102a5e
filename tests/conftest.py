"""Hand-written tests use the project's hypothesis profiles too (``ci`` when CI=true, else ``dev``)."""

from spec import profiles

profiles.load()
