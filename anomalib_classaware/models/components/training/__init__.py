"""Training-only parts (never run at inference or export): losses, feature noise, augmented views, pseudo-labels."""
