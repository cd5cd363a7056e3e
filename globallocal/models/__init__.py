"""What several methods share: CLIP loading and its ViT passes, text parsing, weights identity, hub access."""
