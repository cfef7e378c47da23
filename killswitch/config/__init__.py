"""Configuration: TOML parsed once, at load time, into a frozen, typed object.

``model`` (:class:`~killswitch.config.model.Config` and its sections, frozen
dataclasses; what a reload may change), ``load`` (the file read and every value
checked: ``load_config``), ``reader`` (a TOML table read strictly:
:class:`~killswitch.config.reader.ConfigError` names the dotted key).  Secrets
are not configuration: :mod:`killswitch.exchange.credentials` resolves them.

Nothing is imported here: a module is imported by its own name.
"""
