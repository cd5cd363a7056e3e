"""Data in: photos and masks, the REFER and PhraseCut datasets, batch manifests, safe file readers."""
