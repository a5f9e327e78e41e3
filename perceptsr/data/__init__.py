"""Image data: MATLAB-exact resizing and colour conversion, image I/O, paired SR datasets."""

from perceptsr.data.color import modcrop, quantize, rgb2gray, rgb2ycbcr, to_uint8, ycbcr2rgb
from perceptsr.data.datasets import (
    EpochSampler,
    PairedImageDataset,
    PairedValDataset,
    build_train_loader,
    build_val_loader,
    pair_files,
    worker_init_fn,
)
from perceptsr.data.imresize import imresize
from perceptsr.data.io import IMAGE_EXTENSIONS, ImageInfo, list_images, read_image, read_image_info, write_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "EpochSampler",
    "ImageInfo",
    "PairedImageDataset",
    "PairedValDataset",
    "build_train_loader",
    "build_val_loader",
    "imresize",
    "list_images",
    "modcrop",
    "pair_files",
    "quantize",
    "read_image",
    "read_image_info",
    "rgb2gray",
    "rgb2ycbcr",
    "to_uint8",
    "worker_init_fn",
    "write_image",
    "ycbcr2rgb",
]
