"""Data preparation: DICOM decoding, cohorts, LIDC labelling, splits and image loading."""
