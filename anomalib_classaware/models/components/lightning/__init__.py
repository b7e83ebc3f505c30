"""Lightning glue shared by our models: mixins, category bookkeeping, class labels, pre-processing, export hook."""
