"""Networks of the paper (flax linen, NHWC). See docs/architecture.md."""

from mtcolor.models.decoder import ColorDecoder
from mtcolor.models.heads import ClassHead
from mtcolor.models.init import init_variables
from mtcolor.models.initializers import (
    pix2pix_kernel_init,
    pix2pix_scale_init,
    pytorch_dense_kernel_init,
    torchvision_conv_kernel_init,
)
from mtcolor.models.multitask import MultiTaskModel
from mtcolor.models.patchgan import PatchDiscriminator
from mtcolor.models.resnet import BasicBlock, ResNet18
from mtcolor.models.unet import UNetDecoder

__all__ = [
    "BasicBlock",
    "ClassHead",
    "ColorDecoder",
    "MultiTaskModel",
    "PatchDiscriminator",
    "ResNet18",
    "UNetDecoder",
    "init_variables",
    "pix2pix_kernel_init",
    "pix2pix_scale_init",
    "pytorch_dense_kernel_init",
    "torchvision_conv_kernel_init",
]
