"""SAM 3 alone (Meta, 2025): its own top instance, or the union of its instances, for the phrase."""
