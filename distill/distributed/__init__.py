"""Distributed distillation on ``torch.distributed``: data parallel (DDP with gradient accumulation) and
pipeline parallel (``torch.distributed.pipelining``), every step normalized by its global valid-token count.

* :mod:`~distill.distributed.train`: :func:`train_single` (the one-process oracle), :func:`train_data_parallel`,
  :func:`train_pipeline`;
* :mod:`~distill.distributed.loss`: the per-microbatch token sums through the verified torch backend;
* :mod:`~distill.distributed.model`, :mod:`~distill.distributed.data`: the tiny models and deterministic data;
* :mod:`~distill.distributed.launch`: start N local ranks as ``torchrun`` does (tests, falsifiers);
* ``python -m distill.distributed`` (under ``torchrun``): the command.
"""
