"""Network blocks that run at inference: backbones, bottleneck, decoders, attention, anomaly maps, category head."""
