"""The reference online trainer (the ``train`` extra: torch; the serving install never imports this package).

``events`` (the event-source interface), ``synthetic_stream`` (a seeded short-video world in which freshness
matters), ``features`` (the short-video manifest), ``tables`` (collisionless embedding tables: admission, expiry,
Adagrad, touched set), ``model`` (the DeepFM tower, exported to ONNX), ``generic`` (``GenericTrainer``, the one
online trainer, over any manifest) and ``online`` (``OnlineTrainer``, its short-video adapter). Only ``model``,
``generic`` and ``online`` import torch.
"""
