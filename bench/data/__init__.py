"""Stage 1: image-classification data for `rvbench transfer`: ImageFolder and CIFAR-10 batches decoded once into
uint8 tensors (`datasets.py`), batching and on-device augmentation (`augment.py`), the procedural demo set
(`procedural.py`)."""
