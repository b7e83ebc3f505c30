"""The ``anomalib.plugins`` entry point of this package (loaded by the start-up hook, see ``_autoload``).

Importing our model and datamodule packages defines their ``AnomalibModule`` and
``AnomalibDataModule`` subclasses, which is what anomalib's CLI (jsonargparse subclass
resolution), ``list_models`` and ``get_model`` search; each package then exposes its classes on
anomalib's namespaces itself (:mod:`anomalib_classaware._registry`). Plain ``import`` statements
only: if one of our packages is being imported right now (the user imported it first), this
returns the half-imported module and that package finishes, and registers, on its own.
"""

import anomalib_classaware.data
import anomalib_classaware.models  # noqa: F401
