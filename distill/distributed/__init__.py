"""Distributed distillation on ``torch.distributed``: data parallel (DDP or FSDP2, with gradient
accumulation) and pipeline parallel (``torch.distributed.pipelining``), every step normalized by its global
valid-token count.

* :mod:`~distill.distributed.train`: :func:`train_single` (the one-process oracle), :func:`train_data_parallel`,
  :func:`train_pipeline`;
* :mod:`~distill.distributed.loss`: the per-microbatch token sums through the verified torch backend;
* :mod:`~distill.distributed.model`, :mod:`~distill.distributed.data`: the tiny models and deterministic data;
* :mod:`~distill.distributed.placement`: the device (``cpu`` or ``cuda:LOCAL_RANK``) and backend (gloo, NCCL);
* :mod:`~distill.distributed.launch`: start N local ranks as ``torchrun`` does (tests, falsifiers);
* ``python -m distill.distributed`` (under ``torchrun``): the command.
"""
