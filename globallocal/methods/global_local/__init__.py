"""Global-Local CLIP (Yu, Seo and Son, CVPR 2023): the method and its visual features."""
