"""HybridGL (CVPR 2025): the method, its hybrid visual features, text analysis, GEM and sweep replay."""
