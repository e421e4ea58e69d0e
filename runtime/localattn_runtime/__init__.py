"""localattn runtime: a vLLM plugin. Only registration lives here; everything imports lazily."""


def register() -> None:
    """vLLM `general_plugins` entry point (runs in every vLLM process; must be idempotent)."""
    from localattn_runtime.plugin import register as _register

    _register()
