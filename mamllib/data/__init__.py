"""Data sets: archives on disk -> verified uint8 arrays in a cache. Nothing here knows
of MAML or of training; the episode samplers hand out support/query tensors."""
