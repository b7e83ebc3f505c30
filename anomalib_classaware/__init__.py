"""Multi-class ("unified") anomaly detection for anomalib 2.x.

Importing this package is cheap: the public names below are loaded on first access
(PEP 562), so the start-up hook that registers the plugin never pulls in torch.
"""

TYPE_CHECKING = False  # importing `typing` here would slow down every interpreter start (see _autoload)

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "MultiClassDemo": "anomalib_classaware.data",
    "MultiClassFolder": "anomalib_classaware.data",
    "MultiClassMVTecAD": "anomalib_classaware.data",
    "MultiClassVisa": "anomalib_classaware.data",
    "PerCategoryEvaluator": "anomalib_classaware.metrics",
    "ClassAwareRecon": "anomalib_classaware.models",
    "MintAd": "anomalib_classaware.models",
    "ReContrast": "anomalib_classaware.models",
    "Rlr": "anomalib_classaware.models",
}

__all__ = [
    "ClassAwareRecon",
    "MintAd",
    "MultiClassDemo",
    "MultiClassFolder",
    "MultiClassMVTecAD",
    "MultiClassVisa",
    "PerCategoryEvaluator",
    "ReContrast",
    "Rlr",
    "__version__",
]

if TYPE_CHECKING:
    from anomalib_classaware.data import MultiClassDemo, MultiClassFolder, MultiClassMVTecAD, MultiClassVisa
    from anomalib_classaware.metrics import PerCategoryEvaluator
    from anomalib_classaware.models import ClassAwareRecon, MintAd, ReContrast, Rlr


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib  # deferred: this package is imported at every interpreter start

        return getattr(importlib.import_module(_LAZY[name]), name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
