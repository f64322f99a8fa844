"""Model kinds: a config dataclass and a builder per kind, one registry, one ``load_model``.

A new kind is a config (a ``ModelConfig`` subclass) plus a builder decorated with ``register_model``,
in a module listed in ``registry._KIND_MODULES``.
"""
