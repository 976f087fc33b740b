"""The reference online trainer (the ``train`` extra: torch; the serving install never imports this package).

``events`` (the event-source interface), ``synthetic_stream`` (a seeded short-video world in which freshness
matters), ``features`` (the short-video manifest), ``tables`` (collisionless embedding tables: admission, expiry,
Adagrad, touched set), ``model`` (the DeepFM tower, exported to ONNX), ``online`` (``OnlineTrainer``). Only
``model`` and ``online`` import torch.
"""
