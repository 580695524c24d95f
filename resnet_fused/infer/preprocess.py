"""torchvision's ImageNet evaluation transform for ResNet-50, in batched torch ops.

The transform is ``Resize(256)`` (short side to 256, the long side scaled and truncated to an int,
antialiased bilinear), ``CenterCrop(224)``, conversion to float in [0, 1] and normalisation with
the ImageNet mean and std. As in torchvision, the resized image is uint8 again before the crop,
then ``x / 255``, ``- mean``, ``/ std`` in float32, in that order.

The resize follows what torchvision does with a uint8 image on each device. On the CPU, torch's
native uint8 antialiased kernel (torchvision's tensor path on CPU; it agrees with Pillow's resize,
torchvision's PIL path, to within 1 on a few pixels in a thousand). On a GPU, which has no uint8
antialiased kernel, interpolation in float32 then rounding, as torchvision does there.

Resizing works per image (images differ in size); images of one size are resized together. The
crop, the conversion and the normalisation run once per batch, on whatever device the images are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE = 256
CROP = 224


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Output (height, width) of torchvision's ``Resize(size)`` with an int: the short side becomes
    ``size``, the long side ``int(size * long / short)`` (truncated, as torchvision does)."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def center_crop_box(height: int, width: int, crop: int) -> tuple[int, int]:
    """(top, left) of torchvision's ``CenterCrop(crop)`` (Python's ``round`` of the half margin)."""
    return round((height - crop) / 2.0), round((width - crop) / 2.0)


def resize_uint8(images: Tensor, size: tuple[int, int], native: bool | None = None) -> Tensor:
    """Antialiased bilinear resize of uint8 (N, C, H, W) images to ``size``, uint8 out.

    ``native`` (default: on the CPU) uses torch's uint8 kernel; otherwise the float32 path with
    rounding (the only one CUDA has). An image already of ``size`` is returned as it is, as
    torchvision does.
    """
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    if native is None:
        native = images.device.type == "cpu"
    if native:
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False,
                             antialias=True)
    out = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False,
                        antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


class EvalTransform:
    """``Resize(resize) -> CenterCrop(crop) -> float / 255 -> Normalize(mean, std)``.

    ``resize_crop`` maps one uint8 (3, H, W) image to a uint8 (3, crop, crop) one;
    ``resize_crop_batch`` does a list of them (grouped by size); ``normalize`` turns a uint8
    (N, 3, crop, crop) batch into the model's float input.
    """

    def __init__(self, resize: int = RESIZE, crop: int = CROP,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        for name, value in (("resize", resize), ("crop", crop)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if resize < crop:
            raise ValueError(f"resize ({resize}) must be >= crop ({crop}): the center crop is "
                             "taken from the resized image")
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"mean and std must have 3 entries, std > 0; got {mean}, {std}")
        self.resize, self.crop = resize, crop
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def _resize_same_size(self, images: Tensor) -> Tensor:
        # images: uint8 (N, 3, H, W), all of one size.
        return resize_uint8(images, resized_size(*images.shape[-2:], self.resize))

    def _crop(self, images: Tensor) -> Tensor:
        top, left = center_crop_box(images.shape[-2], images.shape[-1], self.crop)
        return images[..., top:top + self.crop, left:left + self.crop]

    def resize_crop(self, image: Tensor) -> Tensor:
        """uint8 (3, H, W) -> uint8 (3, crop, crop), contiguous."""
        _check_image(image)
        return self.resize_crop_stacked(image.unsqueeze(0))[0].contiguous()

    def resize_crop_stacked(self, images: Tensor) -> Tensor:
        """uint8 (N, 3, H, W), one size for all -> uint8 (N, 3, crop, crop)."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images of sizes (N, 3, H, W), got {images.dtype} "
                             f"with sizes {list(images.shape)}")
        return self._crop(self._resize_same_size(images))

    def resize_crop_batch(self, images: Sequence[Tensor]) -> Tensor:
        """A list of uint8 (3, H_i, W_i) images on one device -> uint8 (N, 3, crop, crop).

        Images of equal size share one interpolation call (a folder of camera photos is mostly
        one size); the output keeps the input order.
        """
        if not images:
            raise ValueError("resize_crop_batch: no images")
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            _check_image(image)
            groups.setdefault(tuple(image.shape[-2:]), []).append(i)
        out = torch.empty((len(images), 3, self.crop, self.crop), dtype=torch.uint8,
                          device=images[0].device)
        for members in groups.values():
            out[members] = self.resize_crop_stacked(torch.stack([images[i] for i in members]))
        return out

    def normalize(self, batch: Tensor) -> Tensor:
        """uint8 (N, 3, crop, crop) -> float32 ``(x / 255 - mean) / std`` on the batch's device."""
        if batch.dtype != torch.uint8 or batch.dim() != 4 or batch.shape[1] != 3:
            raise ValueError(f"normalize expects a uint8 (N, 3, H, W) batch, got {batch.dtype} "
                             f"with sizes {list(batch.shape)}")
        mean = torch.tensor(self.mean, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=batch.device).view(1, 3, 1, 1)
        return batch.float().div_(255).sub_(mean).div_(std)


def _check_image(image: Tensor) -> None:
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a uint8 RGB image of sizes (3, H, W), got {image.dtype} with "
                         f"sizes {list(image.shape)}")
