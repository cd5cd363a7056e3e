"""Work over many images: evaluation, batch, the run folder, the feature cache, sweeps, reports, metrics."""
