"""nbdist.arc: ARC-AGI data, augmentations, grid text format and the candidate Decoder."""
