"""Undoing a test plugin (a module that registers fake backends on import) in the current process."""
import sys


def unregister_plugin(module: str, names) -> None:
    """Drop the backends ``names`` from the registry, and the plugin ``module`` from the loaded plugins and
    ``sys.modules`` (so the next import registers them again)."""
    from flashbench import backends
    from flashbench.backends import plugins

    for n in names:
        backends.REGISTRY.pop(n, None)
    if module in plugins._loaded:
        plugins._loaded.remove(module)
    sys.modules.pop(module, None)
