"""Shared reconstruction kit: backbones, fusion bottleneck, mirrored decoder, anomaly maps, losses, noise, masks."""

from .anomaly_map import AnomalyMapGenerator, cosine_distance_map
from .attention import MaskedAttention
from .attention_masks import neighbourhood_mask
from .backbone import (
    FeatureInfo,
    create_feature_extractor,
    get_feature_info,
    load_backbone_weights,
    map_state_dict,
    read_state_dict,
)
from .batchnorm import frozen_batchnorm_statistics
from .blocks import BlockConfig, ResidualBlock, make_activation, make_stage, reverse_distillation_blocks
from .bottleneck import MultiScaleFusionBottleneck
from .categories import CategoryNamesMixin, batch_category_ids, validate_category_names
from .decoder import FeatureDecoder
from .feature_noise import feature_jitter, position_noise
from .losses import alpha_schedule, global_cosine_hard_mining_loss, pixel_cosine_loss, scale_easy_gradients
from .positional import fourier_features, grid_coordinates, sincos_positions
from .standardizer import RunningStandardizer
from .student import build_reverse_distillation_student
from .transformer import LayerwiseQueryDecoderLayer, NeighbourMaskedEncoderLayer, check_attention_mask

__all__ = [
    "AnomalyMapGenerator",
    "BlockConfig",
    "CategoryNamesMixin",
    "FeatureDecoder",
    "FeatureInfo",
    "LayerwiseQueryDecoderLayer",
    "MaskedAttention",
    "MultiScaleFusionBottleneck",
    "NeighbourMaskedEncoderLayer",
    "ResidualBlock",
    "RunningStandardizer",
    "alpha_schedule",
    "batch_category_ids",
    "build_reverse_distillation_student",
    "check_attention_mask",
    "cosine_distance_map",
    "create_feature_extractor",
    "feature_jitter",
    "fourier_features",
    "frozen_batchnorm_statistics",
    "get_feature_info",
    "global_cosine_hard_mining_loss",
    "grid_coordinates",
    "load_backbone_weights",
    "make_activation",
    "make_stage",
    "map_state_dict",
    "neighbourhood_mask",
    "pixel_cosine_loss",
    "position_noise",
    "read_state_dict",
    "reverse_distillation_blocks",
    "scale_easy_gradients",
    "sincos_positions",
    "validate_category_names",
]
