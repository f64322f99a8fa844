"""Labelled image data as a first-class object (``ImageDataset``): CIFAR-10/100, .npz files and image
folders, decoded once into a cache, split by the lab's protocol, augmented on the device.

Images stay uint8 until a batch is taken; ``arrays.scale_images`` is the one scaling rule.
"""
