"""multikd: multi-teacher knowledge distillation on CIFAR-style image classification."""

__version__ = "0.1.0"
