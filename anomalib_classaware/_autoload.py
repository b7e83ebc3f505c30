"""Start-up hook that loads ``anomalib.plugins`` entry points into anomalib.

anomalib 2.7 has no plugin mechanism: its CLI resolves ``--model X`` only among the
``AnomalibModule`` subclasses already imported when the command line is parsed. The wheel
therefore ships ``anomalib_classaware_autoload.pth``, which Python's ``site`` module runs at
every interpreter start. It calls :func:`install`, which only appends a tiny finder to
``sys.meta_path`` (standard library only, no torch, no anomalib). It watches ``anomalib``
modules only; as soon as one of ``anomalib.models``/``anomalib.data``/``anomalib.metrics`` has
been imported and no ``anomalib`` module is still half-imported (whatever the import order),
it loads every entry point of the ``anomalib.plugins`` group once, so our models and
datamodules become visible by short name before anomalib's CLI parses the command line.

Set ``ANOMALIB_DISABLE_PLUGIN_AUTOLOAD=1`` to switch this off. A plugin that fails to load
produces a warning that names it; anomalib itself keeps working.
"""

import os
import sys

TYPE_CHECKING = False  # `typing` and `importlib.abc` cost ~30 ms at start-up: keep them out
if TYPE_CHECKING:
    from importlib.abc import Loader
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any

ENTRY_POINT_GROUP = "anomalib.plugins"
DISABLE_ENV_VAR = "ANOMALIB_DISABLE_PLUGIN_AUTOLOAD"
TRIGGER_MODULES = ("anomalib.models", "anomalib.data", "anomalib.metrics")

_state = {"loaded": False, "loading": False, "depth": 0}


def autoload_disabled() -> bool:
    """Return True when the user switched autoloading off through the environment."""
    return os.environ.get(DISABLE_ENV_VAR, "").strip().lower() in {"1", "true", "yes", "on"}


def load_plugins() -> list[str]:
    """Import every entry point of the ``anomalib.plugins`` group once; return the names loaded.

    A failing plugin is reported with a warning naming it and does not stop the others.
    """
    if _state["loaded"] or _state["loading"]:
        return []
    _state["loading"] = True
    loaded: list[str] = []
    try:
        import warnings
        from importlib.metadata import entry_points

        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            try:
                plugin = entry_point.load()
                register = getattr(plugin, "register", None)
                if callable(register):
                    register()
                loaded.append(entry_point.name)
            except Exception as error:  # a broken plugin must never crash anomalib
                warnings.warn(
                    f"anomalib plugin {entry_point.name!r} ({entry_point.value}) failed to load and is skipped: "
                    f"{type(error).__name__}: {error}. Set {DISABLE_ENV_VAR}=1 to disable plugin autoloading.",
                    RuntimeWarning,
                    stacklevel=2,
                )
        _state["loaded"] = True
    finally:
        _state["loading"] = False
    return loaded


def _is_anomalib(name: str) -> bool:
    return name == "anomalib" or name.startswith("anomalib.")


class _LoaderWrapper:
    """Delegate to the real loader; count anomalib modules being executed; load plugins when it is safe.

    "Safe" means: no ``anomalib`` module is half-imported (a plugin importing a half-initialised
    ``anomalib.metrics`` would fail) and one of :data:`TRIGGER_MODULES` has been imported.
    """

    def __init__(self, loader: "Loader") -> None:
        self._loader = loader

    def create_module(self, spec: "ModuleSpec") -> "ModuleType | None":
        return self._loader.create_module(spec)

    def exec_module(self, module: "ModuleType") -> None:
        _state["depth"] += 1
        try:
            self._loader.exec_module(module)
        finally:
            _state["depth"] -= 1
        if _state["depth"] or _state["loaded"] or not any(name in sys.modules for name in TRIGGER_MODULES):
            return
        # importlib binds `anomalib.x` on its parent only after exec_module returns; plugins that
        # `import anomalib.x` right now need that binding, so make it first (same object, same name).
        parent, _, child = module.__name__.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], child, module)
        load_plugins()

    def __getattr__(self, name: str) -> "Any":  # get_resource_reader, is_package, ...
        return getattr(self._loader, name)


class _AnomalibImportWatcher:
    """A meta-path finder that wraps the loaders of ``anomalib`` modules until the plugins are loaded."""

    def find_spec(self, fullname: str, path: "Any" = None, target: "ModuleType | None" = None) -> "ModuleSpec | None":
        if _state["loaded"] or not _is_anomalib(fullname):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _LoaderWrapper(spec.loader)
                return spec
        return None


def install() -> None:
    """Register the import watcher (idempotent). Called from the ``.pth`` file at start-up."""
    if autoload_disabled() or any(isinstance(finder, _AnomalibImportWatcher) for finder in sys.meta_path):
        return
    if any(name in sys.modules for name in TRIGGER_MODULES):  # anomalib already imported: load now
        load_plugins()
        return
    sys.meta_path.insert(0, _AnomalibImportWatcher())
