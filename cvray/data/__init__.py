"""Data readers: CIFAR-10 in its three on-disk formats, and robust decoding of user images."""
