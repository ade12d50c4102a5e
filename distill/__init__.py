"""Distillation of real torch / Hugging Face language models (the application beside ``reference/``).

``python -m distill`` (or ``kd-distill``) trains a student towards a teacher through a verified KD backend.
"""
