"""Parts shared by our models, by layer (each imports only the ones above it in this list).

- :mod:`.networks`: network blocks that run at inference (backbones, frozen encoders, bottleneck, decoders, the RD
  student, attention, anomaly maps, category prototypes);
- :mod:`.training`: training-only parts (reconstruction and contrastive losses, feature noise, augmented
  views, pseudo-labels, DDP gathers);
- :mod:`.lightning`: Lightning glue (mixins, the models' shared base and ``__init__`` helpers, category names, class
  labels, pre-processing, export hook).

Parts used by a single model live in that model's folder.
"""

from typing import TYPE_CHECKING

from .lightning.category_names import CategoryNamesMixin, batch_category_ids, validate_category_names
from .networks.anomaly_map import AnomalyMapGenerator, cosine_distance_map
from .networks.attention import MaskedAttention
from .networks.attention_masks import neighbourhood_mask
from .networks.backbone import (
    FeatureInfo,
    create_feature_extractor,
    get_feature_info,
    load_backbone_weights,
    map_state_dict,
    read_state_dict,
)
from .networks.batchnorm import frozen_batchnorm_statistics
from .networks.blocks import BlockConfig, ResidualBlock, make_activation, make_stage, reverse_distillation_blocks
from .networks.bottleneck import MultiScaleFusionBottleneck
from .networks.decoder import FeatureDecoder
from .networks.frozen_encoders import EvalModeEncoders
from .networks.positional import fourier_features, grid_coordinates, sincos_positions
from .networks.student import build_reverse_distillation_student, frozen_teacher_and_student
from .networks.transformer import LayerwiseQueryDecoderLayer, NeighbourMaskedEncoderLayer, check_attention_mask
from .training.feature_noise import feature_jitter, position_noise
from .training.reconstruction_losses import (
    alpha_schedule,
    global_cosine_hard_mining_loss,
    pixel_cosine_loss,
    scale_easy_gradients,
)

if TYPE_CHECKING:
    from anomalib_classaware.models.mint_ad.standardizer import RunningStandardizer

__all__ = [
    "AnomalyMapGenerator",
    "BlockConfig",
    "CategoryNamesMixin",
    "EvalModeEncoders",
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
    "frozen_teacher_and_student",
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


def __getattr__(name: str) -> object:
    """``RunningStandardizer`` moved to MINT-AD's folder; loaded on access (it imports this package)."""
    if name == "RunningStandardizer":
        from anomalib_classaware.models.mint_ad.standardizer import RunningStandardizer

        return RunningStandardizer
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
