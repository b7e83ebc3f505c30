"""Per-category evaluation for multi-class ("unified") anomaly detection.

The number reported in the multi-class literature is the *mean of per-category metrics*,
not a metric pooled over all test images (pooling mixes the score scales of different
categories). :class:`PerCategoryEvaluator` is an anomalib :class:`~anomalib.metrics.Evaluator`
that keeps, at test time, one metric set per category:

========================  ==========================================  ============================
name                      what                                        batch fields
========================  ==========================================  ============================
``image_AUROC``           image-level AUROC                           ``pred_score``, ``gt_label``
``image_F1Max``           image-level F1 at the best threshold        ``pred_score``, ``gt_label``
``pixel_AUROC``           pixel-level AUROC                           ``anomaly_map``, ``gt_mask``
``pixel_AUPRO``           area under the PRO curve up to FPR 0.3      ``anomaly_map``, ``gt_mask``
========================  ==========================================  ============================

At the end of the test epoch it logs ``<category>/<metric>`` and ``mean/<metric>`` (the mean
over categories, NaN ignored), prints one table, writes ``per_category_metrics.csv`` into the
run's results folder and keeps the numbers in :attr:`PerCategoryEvaluator.last_results`.

Threshold-free metrics use the **raw** model scores: the post-processor's normalisation clamps
scores to ``[0, 1]`` with one threshold and min-max, which ties the highest scores of a category
at 1.0 and biases AUROC and AUPRO. :class:`~anomalib_classaware.post_processing.PerCategoryPostProcessor`
keeps the raw values on the batch (``raw_pred_score``, ``raw_anomaly_map``) and they are read
from there; no sigmoid is applied. Thresholded metrics use the labels the post-processor
produces:

========================  ==========================================  ============================
``image_F1``              F1 of ``pred_label`` (the model's threshold)  ``pred_label``, ``gt_label``
``label_accuracy``        fraction of images with the right label     ``pred_label``, ``gt_label``
``category_accuracy``     fraction of images whose predicted category  ``pred_category``,
                          is their dataset category                    ``category_id``
========================  ==========================================  ============================

``category_accuracy`` is reported when the model's ``category_names`` are the datamodule's (dataset
labels; with pseudo labels the predicted ids are clusters).

Units: logged values, :attr:`~PerCategoryEvaluator.last_results` and the CSV hold fractions
in ``[0, 1]`` (like anomalib's own metrics); the printed table shows percent with one decimal,
as papers do.

The category of each sample is read from the batch field ``category`` (``list[str]``), or,
failing that, ``category_id`` (named ``str(id)``). Batches without either (plain anomalib
datamodules) form one category named after ``trainer.datamodule.category`` or ``"all"``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from anomalib.metrics import AnomalibMetric, Evaluator
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import distributed
from torchmetrics import Metric

from anomalib_classaware._stats import nanmean

from .category_metrics import (
    ALL_FIELDS,
    CATEGORY_ACCURACY,
    CSV_FILENAME,
    DEFAULT_CATEGORY,
    IMAGE_FIELDS,
    LABEL_FIELDS,
    MEAN_KEY,
    PIXEL_FIELDS,
    RAW_FIELDS,
    REPORT_COLUMNS,
    CategoryMetrics,
    CategoryMetricsDict,
    PerCategoryResults,
)
from .tables import print_per_category_table, write_csv

logger = logging.getLogger(__name__)


class PerCategoryEvaluator(Evaluator):
    """Evaluator that computes test metrics per category and their mean.

    Validation metrics (and any pooled ``test_metrics`` passed in) behave exactly as in
    anomalib's :class:`~anomalib.metrics.Evaluator`. In addition, at test time one metric set
    (image AUROC, image F1Max, pixel AUROC, AUPRO) is kept per category, created when a category
    first appears. At the end of the test epoch the evaluator

    * logs ``<category>/<metric>`` and ``mean/<metric>`` with ``pl_module.log`` (fractions);
      ``mean`` is the mean over categories, ignoring NaN;
    * prints a table (rows: categories and ``mean``; values in percent, one decimal) on global
      rank zero, through ``rich`` when it is installed;
    * writes ``per_category_metrics.csv`` (fractions, six decimals, last row ``mean``) into
      ``results_dir`` or else ``trainer.default_root_dir``. anomalib's ``Engine`` sets that to
      the run's versioned folder ``results/<Model>/<Dataset>/<category>/vN``; a test-only run
      (``anomalib test``) reuses the latest version folder, so a CSV from an earlier test of the
      same run is overwritten (with an info message);
    * stores the numbers in :attr:`last_results`.

    Pixel metrics are computed only for batches carrying both ``anomaly_map`` and ``gt_mask``;
    their columns are omitted when no category had any. A metric whose targets within a
    category are all of one class is NaN, with a warning naming the category.

    Predictions are read from the test step's ``outputs`` when it is a batch object (the object
    anomalib's post-processor normalises), otherwise from ``batch``; categories from whichever
    of the two has them.

    Memory: pixel AUROC and AUPRO each keep every pixel of every anomaly map (float32) and mask
    (bool) until the epoch ends, as anomalib's pixel metrics do: 10 bytes per test pixel, about
    1.1 GB for MVTec AD at 256 x 256 (host memory with ``compute_on_cpu=True``). Computing one
    category temporarily needs a few times that category's share (sorting). Use
    ``pixel_metrics=False`` to skip them. The metric sets are discarded after the epoch.

    Distributed runs: the per-category states are torchmetrics metrics, so ``compute()``
    synchronises them across processes. Before that, the processes exchange the categories they
    saw (``all_gather_object``) and each creates the ones it lacks, with an empty update of the
    same field types, so every category's states are reduced with the same category's states of
    the other processes, whichever process saw which category first (or at all).

    Checkpoints: the per-category metrics hold no persistent state, so they add no keys to the
    model's ``state_dict`` and strict ``load_from_checkpoint`` works before and after testing.

    Args:
        val_metrics: Validation metrics, as for :class:`~anomalib.metrics.Evaluator`.
        test_metrics: Additional pooled test metrics, as for :class:`~anomalib.metrics.Evaluator`.
        compute_on_cpu: Keep metric states on the CPU when a single device is used.
        pixel_metrics: Compute ``pixel_AUROC`` and ``pixel_AUPRO``.
        fpr_limit: FPR limit of AUPRO.
        print_table: Print the table at the end of the test epoch.
        save_csv: Write the CSV at the end of the test epoch.
        results_dir: Folder for the CSV; defaults to ``trainer.default_root_dir``.
        csv_filename: File name of the CSV.

    Attributes:
        last_results: Results of the last test epoch (see :data:`PerCategoryResults`); empty
            before the first one.
        last_csv_path: Path of the last CSV written, or ``None``.

    Example:
        >>> evaluator = PerCategoryEvaluator()
        >>> model = Padim(evaluator=evaluator)  # doctest: +SKIP
        >>> Engine().test(model, datamodule=datamodule)  # doctest: +SKIP
        >>> print(per_category_metrics_table(evaluator.last_results))  # doctest: +SKIP

    """

    def __init__(
        self,
        val_metrics: AnomalibMetric | Sequence[AnomalibMetric] | None = None,
        test_metrics: AnomalibMetric | Sequence[AnomalibMetric] | None = None,
        compute_on_cpu: bool = True,
        *,
        pixel_metrics: bool = True,
        fpr_limit: float = 0.3,
        print_table: bool = True,
        save_csv: bool = True,
        results_dir: str | Path | None = None,
        csv_filename: str = CSV_FILENAME,
    ) -> None:
        super().__init__(val_metrics=val_metrics, test_metrics=test_metrics, compute_on_cpu=compute_on_cpu)
        if not 0.0 < fpr_limit <= 1.0:
            msg = f"fpr_limit must lie in (0, 1], got {fpr_limit}."
            raise ValueError(msg)
        self.pixel_metrics = pixel_metrics
        self.fpr_limit = fpr_limit
        self.print_table = print_table
        self.save_csv = save_csv
        self.results_dir = Path(results_dir) if results_dir is not None else None
        self.csv_filename = csv_filename
        self.category_metrics = CategoryMetricsDict()
        self._category_keys: dict[str, str] = {}  # category name -> ModuleDict key
        self._category_ids: dict[str, int | None] = {}
        self._field_templates: dict[str, dict[str, tuple[torch.dtype, tuple[int, ...]]]] = {}
        self._device: torch.device | None = None
        self._default_category = DEFAULT_CATEGORY
        self._states_on_cpu = compute_on_cpu
        self.last_results: PerCategoryResults = {}
        self.last_csv_path: Path | None = None
        self._report_category_accuracy = True
        self._warned_normalised = False

    @classmethod
    def from_evaluator(cls, evaluator: Evaluator, **kwargs: Any) -> PerCategoryEvaluator:
        """Build a per-category evaluator that keeps ``evaluator``'s validation and pooled test metrics.

        Args:
            evaluator: Evaluator to take ``val_metrics``, ``test_metrics`` and ``compute_on_cpu`` from.
            **kwargs: Keyword arguments of :class:`PerCategoryEvaluator`.

        Returns:
            The new evaluator.

        """
        kwargs.setdefault("compute_on_cpu", evaluator.compute_on_cpu)
        return cls(val_metrics=list(evaluator.val_metrics), test_metrics=list(evaluator.test_metrics), **kwargs)

    @property
    def categories(self) -> list[str]:
        """Categories seen in the current test epoch, in report order."""
        return sorted(self._category_keys, key=self._sort_key)

    def _sort_key(self, name: str) -> tuple[bool, int, str]:
        category_id = self._category_ids.get(name)
        return (category_id is None, category_id if category_id is not None else 0, name)

    def reset_categories(self) -> None:
        """Drop all per-category metric sets."""
        self.category_metrics.clear()
        self._category_keys.clear()
        self._category_ids.clear()
        self._field_templates.clear()

    # Lightning hooks ----------------------------------------------------------------------------

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Decide where per-category metric states live, then set up the base metrics."""
        super().setup(trainer, pl_module, stage)
        self._states_on_cpu = self.compute_on_cpu and trainer.num_devices <= 1
        self._device = pl_module.device

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Start from empty per-category state; name the fallback category after the datamodule."""
        self.reset_categories()
        datamodule = getattr(trainer, "datamodule", None)
        category = getattr(datamodule, "category", None)
        self._default_category = category if isinstance(category, str) and category else DEFAULT_CATEGORY
        # Predicted ids are comparable with dataset ids only when the model's categories are the dataset's.
        model_names = getattr(pl_module, "category_names", None)
        data_names = getattr(datamodule, "category_names", None)
        self._report_category_accuracy = not model_names or not data_names or list(model_names) == list(data_names)

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: STEP_OUTPUT | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Update the pooled test metrics and the per-category metrics with the batch."""
        super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        predictions = outputs if _is_batch(outputs) else batch
        if not self._warned_normalised and getattr(predictions, "raw_pred_score", None) is None:
            post_processor = getattr(pl_module, "post_processor", None)
            if getattr(post_processor, "enable_normalization", False):
                self._warned_normalised = True
                logger.warning(
                    "PerCategoryEvaluator: %s's %s keeps no raw scores, so AUROC, F1-max and AUPRO are computed on "
                    "normalised (clamped) scores. Use anomalib_classaware.post_processing.PerCategoryPostProcessor "
                    "(our datamodules attach it to any model).",
                    type(pl_module).__name__,
                    type(post_processor).__name__,
                )
        self.update(predictions, fallback=batch)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Compute, log, print and save the per-category results, then free the metric states."""
        super().on_test_epoch_end(trainer, pl_module)
        results = self.compute()
        self.last_results = results
        self.reset_categories()
        if not results:
            logger.warning("PerCategoryEvaluator received no test samples with labels; nothing to report.")
            return
        self._log(trainer, pl_module, results)
        if trainer is not None and not trainer.is_global_zero:
            return
        if self.print_table:
            print_per_category_table(results)
        if self.save_csv:
            results_dir = self.results_dir
            if results_dir is None and trainer is not None:
                results_dir = Path(trainer.default_root_dir)
            if results_dir is not None:
                self.last_csv_path = write_csv(results, results_dir / self.csv_filename)

    # Metric state -------------------------------------------------------------------------------

    def update(self, batch: Any, fallback: Any = None) -> None:
        """Route the samples of ``batch`` to the metric sets of their categories.

        Args:
            batch: Batch holding predictions and targets.
            fallback: Object to read ``category`` / ``category_id`` from when ``batch`` has none.

        """
        size = _batch_size(batch)
        if size == 0:
            return
        names, ids = self._sample_categories(batch, fallback, size)
        for name in dict.fromkeys(names):
            index = [i for i, sample_name in enumerate(names) if sample_name == name]
            category_id = ids[index[0]] if ids is not None else None
            selected = _select(batch, index, size)
            self._metrics_for(name, category_id, batch).update(selected)
            self._field_templates.setdefault(name, _field_template(selected))

    def compute(self) -> PerCategoryResults:
        """Compute the per-category metrics of the current test epoch and their mean.

        Returns:
            ``{category: {metric: value}}`` in report order plus a final ``"mean"`` row; every
            row has the same metric columns. Empty if no category received labelled samples.

        """
        self._synchronise_categories()
        rows = {name: self.category_metrics[self._category_keys[name]].compute() for name in self.categories}
        rows = {name: row for name, row in rows.items() if row}
        columns = [metric for metric in REPORT_COLUMNS if any(metric in row for row in rows.values())]
        if not self._report_category_accuracy:
            columns = [metric for metric in columns if metric != CATEGORY_ACCURACY]
        results: PerCategoryResults = {
            name: {metric: row.get(metric, math.nan) for metric in columns} for name, row in rows.items()
        }
        if results:
            results[MEAN_KEY] = {metric: nanmean([row[metric] for row in results.values()]) for metric in columns}
        return results

    def _synchronise_categories(self) -> None:
        """Under ``torch.distributed``, give every process the categories seen by any process.

        torchmetrics reduces a metric's states with those of the metric computed at the same point
        on the other processes; :meth:`compute` goes through :attr:`categories` in the same order on
        every process once they all hold the same categories. A category a process never saw gets
        an empty update with the field dtypes and trailing shapes seen elsewhere, so its empty list
        states gather with the others' (torchmetrics' own placeholder is a float vector).
        """
        if not (distributed.is_available() and distributed.is_initialized()) or distributed.get_world_size() < 2:
            return
        local = {name: (self._category_ids[name], self._field_templates.get(name, {})) for name in self._category_keys}
        gathered: list[Any] = [None] * distributed.get_world_size()
        distributed.all_gather_object(gathered, local)
        for categories in gathered:
            for name, (category_id, template) in categories.items():
                if name not in self._category_keys:
                    empty = _empty_batch(template, self._device)
                    self._metrics_for(name, category_id, empty).update(empty)
                    self._field_templates[name] = template

    def _sample_categories(self, batch: Any, fallback: Any, size: int) -> tuple[list[str], list[int] | None]:
        sources = (batch, fallback)
        names_value = next((v for s in sources if (v := getattr(s, "category", None)) is not None), None)
        ids_value = next((v for s in sources if (v := getattr(s, "category_id", None)) is not None), None)
        ids = None
        if ids_value is not None:
            ids = [int(i) for i in torch.as_tensor(ids_value).reshape(-1).tolist()]
            if len(ids) == 1 and size > 1:
                ids *= size
        if names_value is None:
            names = [str(i) for i in ids] if ids is not None else [self._default_category] * size
        elif isinstance(names_value, str):
            names = [names_value] * size
        else:
            names = [str(name) for name in names_value]
        if len(names) != size or (ids is not None and len(ids) != size):
            msg = f"Batch has {size} samples but {len(names)} category names / {len(ids or names)} category ids."
            raise ValueError(msg)
        return names, ids

    def _metrics_for(self, name: str, category_id: int | None, batch: Any) -> CategoryMetrics:
        if name in self._category_keys:
            return self.category_metrics[self._category_keys[name]]
        if name == MEAN_KEY:
            msg = f"Category name {MEAN_KEY!r} is reserved for the mean over categories."
            raise ValueError(msg)
        key = f"category_{len(self._category_keys)}"
        metrics = CategoryMetrics(name, pixel_metrics=self.pixel_metrics, fpr_limit=self.fpr_limit)
        device = next((t.device for t in _field_values(batch) if isinstance(t, torch.Tensor)), None)
        if device is not None:
            metrics.to(device)
        for module in metrics.modules():
            if isinstance(module, Metric):
                module.compute_on_cpu = self._states_on_cpu
        self.category_metrics[key] = metrics
        self._category_keys[name] = key
        self._category_ids[name] = category_id
        return metrics

    def _log(self, trainer: Trainer | None, pl_module: LightningModule | None, results: PerCategoryResults) -> None:
        # The values are already reduced over processes (identical everywhere); ``sync_dist`` averages
        # identical values and keeps Lightning from warning that epoch-level values are not synchronised.
        sync_dist = trainer is not None and trainer.world_size > 1
        for category, row in results.items():
            for metric, value in row.items():
                name = f"{category}/{metric}"
                if trainer is not None and trainer.barebones:
                    # Logging is disabled in barebones mode; expose the values like anomalib's Evaluator does.
                    trainer.callback_metrics[name] = torch.tensor(value)
                    trainer.logged_metrics[name] = torch.tensor(value)
                elif pl_module is not None:
                    pl_module.log(name, value, sync_dist=sync_dist)


def _field_values(batch: Any) -> list[Any]:
    """Values of the prediction and target fields of ``batch`` that are set."""
    return [value for name in (*IMAGE_FIELDS, *PIXEL_FIELDS) if (value := getattr(batch, name, None)) is not None]


def _field_template(batch: Any) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """``{field: (dtype, shape without the batch dimension)}`` of the tensor fields of ``batch``."""
    return {
        name: (value.dtype, tuple(value.shape[1:]))
        for name in (*IMAGE_FIELDS, *PIXEL_FIELDS)
        if isinstance(value := getattr(batch, name, None), torch.Tensor)
    }


def _empty_batch(template: dict[str, tuple[torch.dtype, tuple[int, ...]]], device: torch.device | None) -> Any:
    """A batch of zero samples with the fields, dtypes and trailing shapes of ``template``."""
    fields: dict[str, Any] = dict.fromkeys((*IMAGE_FIELDS, *PIXEL_FIELDS))
    fields |= {name: torch.zeros((0, *shape), dtype=dtype, device=device) for name, (dtype, shape) in template.items()}
    return SimpleNamespace(**fields)


def _is_batch(value: Any) -> bool:
    return value is not None and any(hasattr(value, name) for name in ("pred_score", "anomaly_map"))


def _batch_size(batch: Any) -> int:
    for value in _field_values(batch):
        if isinstance(value, torch.Tensor):
            return int(value.shape[0]) if value.ndim > 0 else 1
    return 0


def _select(batch: Any, index: list[int], size: int) -> SimpleNamespace:
    """Take the samples ``index`` of the prediction and target fields of ``batch``."""
    selected = SimpleNamespace()
    for name in ALL_FIELDS:
        raw = getattr(batch, RAW_FIELDS[name], None) if name in RAW_FIELDS else None
        value = raw if raw is not None else getattr(batch, name, None)
        if name in LABEL_FIELDS and value is not None and not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value)
        if isinstance(value, torch.Tensor) and value.ndim == 0:
            value = value.reshape(1)
        if isinstance(value, torch.Tensor) and value.shape[0] == size:
            if len(index) != size:
                value = value[torch.as_tensor(index, device=value.device)]
        elif value is not None:
            msg = f"Batch field {name!r} must be a tensor with the batch size {size} as first dimension."
            raise ValueError(msg)
        setattr(selected, name, value)
    return selected
