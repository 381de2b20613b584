"""Pretrained weights: a torch-free .pth reader, converters, sources, storage and merging."""
