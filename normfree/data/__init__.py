"""Datasets: Fashion-MNIST IDX files, image folders, synthetic images; their batching and
transforms (docs/architecture.md §14). The constants here need no torch (command-line help)."""

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"  # where Debian's package puts the IDX files
INSTALL_HINT = "apt-get update && apt-get install -y dataset-fashion-mnist"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Folder data's input pipelines: torchvision's, or DeepMind's (docs/architecture.md §11.1)
PIPELINES = ("torchvision", "reference")
# The RandAugment magnitudes each pipeline defines, [low, high): the reference's Posterize keeps
# int(0.4·m) bits, past 8 at 22.5; torchvision's RandAugment has 31 magnitude bins.
RANDAUGMENT_MAGNITUDES = {"torchvision": (0, 31), "reference": (0.0, 22.5)}
MAX_IMAGE_SIZE = 2048  # the largest crop `predict` and `eval --weights` take (README)
