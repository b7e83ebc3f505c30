"""Shared reconstruction kit: backbones, fusion bottleneck, mirrored decoder, anomaly maps, losses."""

from .anomaly_map import AnomalyMapGenerator, cosine_distance_map
from .backbone import (
    FeatureInfo,
    create_feature_extractor,
    get_feature_info,
    load_backbone_weights,
    map_state_dict,
    read_state_dict,
)
from .blocks import BlockConfig, ResidualBlock, make_activation, make_stage, reverse_distillation_blocks
from .bottleneck import MultiScaleFusionBottleneck
from .categories import CategoryNamesMixin, batch_category_ids, validate_category_names
from .decoder import FeatureDecoder
from .losses import alpha_schedule, global_cosine_hard_mining_loss, pixel_cosine_loss, scale_easy_gradients
from .student import build_reverse_distillation_student

__all__ = [
    "AnomalyMapGenerator",
    "BlockConfig",
    "CategoryNamesMixin",
    "FeatureDecoder",
    "FeatureInfo",
    "MultiScaleFusionBottleneck",
    "ResidualBlock",
    "alpha_schedule",
    "batch_category_ids",
    "build_reverse_distillation_student",
    "cosine_distance_map",
    "create_feature_extractor",
    "get_feature_info",
    "global_cosine_hard_mining_loss",
    "load_backbone_weights",
    "make_activation",
    "make_stage",
    "map_state_dict",
    "pixel_cosine_loss",
    "read_state_dict",
    "reverse_distillation_blocks",
    "scale_easy_gradients",
    "validate_category_names",
]
