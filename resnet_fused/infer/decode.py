"""Image decoding: Pillow on the CPU (any format it reads), batched JPEG decoding on the GPU
through ``torchvision.io`` where torchvision imports and a GPU is present.

Every decoded image is a uint8 RGB tensor of sizes (3, H, W) (with the strides of an (H, W, 3)
array). Grayscale, palette, CMYK and alpha images are converted to RGB (alpha dropped); 16-bit
images are scaled to 8 bits. Anything that cannot be decoded raises :class:`DecodeError` with a
reason for the errors file: empty or truncated files, files that are not images, images above
``max_pixels``.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

# What a folder scan picks up (the usual image suffixes, as torchvision's ImageFolder); files
# named explicitly are decoded whatever their suffix.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
                    ".gif")
# Pillow's default decompression-bomb threshold, Image.MAX_IMAGE_PIXELS (it warns above it and
# refuses at twice it).
DEFAULT_MAX_PIXELS = 89_478_485
_JPEG_MAGIC = b"\xff\xd8\xff"
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class DecodeError(Exception):
    """An image that cannot be used; ``str()`` is the reason written to the errors file."""


def pillow():
    """Pillow's ``Image`` module. Imported on first use, so the rest of the package (and the
    command line's ``--help``) works without Pillow; the job checks for it before any work."""
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("decoding images needs Pillow: `pip install pillow`") from e
    return Image


def read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DecodeError(f"cannot read file: {e.strerror or e}") from e
    if not data:
        raise DecodeError("empty file (0 bytes)")
    return data


def is_jpeg(data: bytes) -> bool:
    return data[:3] == _JPEG_MAGIC


def _open(data: bytes, max_pixels: int):
    Image = pillow()  # the module, under its usual name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise DecodeError(f"too large for Pillow (decompression-bomb limit): {e}") from e
    except Image.UnidentifiedImageError as e:
        raise DecodeError("not an image (or a format Pillow cannot read)") from e
    except Exception as e:  # a damaged header can raise anything from a plugin
        raise DecodeError(f"cannot open image: {type(e).__name__}: {e}") from e
    w, h = image.size
    if w * h > max_pixels:
        raise DecodeError(f"too large: {w}x{h} = {w * h} pixels > max_pixels={max_pixels}")
    if w < 1 or h < 1:
        raise DecodeError(f"degenerate size {w}x{h}")
    return image


def _sixteen_bit_to_rgb(image) -> np.ndarray:
    # Pillow's convert("RGB") clips 16-bit values at 255 instead of scaling them: scale here,
    # rounding v * 255 / 65535.
    values = np.asarray(image, dtype=np.int64).clip(0, 65535)
    gray = ((values * 255 + 32767) // 65535).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


def decode_pil(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Tensor:
    """Encoded image bytes -> uint8 RGB (3, H, W), or :class:`DecodeError`."""
    image = _open(data, max_pixels)
    try:
        image.load()
        if image.mode in _SIXTEEN_BIT_MODES:
            array = _sixteen_bit_to_rgb(image)
        elif image.mode == "F":
            raise DecodeError("unsupported pixel format: 32-bit float (mode F)")
        else:
            array = np.array(image if image.mode == "RGB" else image.convert("RGB"))
    except DecodeError:
        raise
    except OSError as e:  # Pillow reports truncated and corrupt data as OSError
        raise DecodeError(f"corrupt or truncated image data: {e}") from e
    except Exception as e:
        raise DecodeError(f"cannot decode image: {type(e).__name__}: {e}") from e
    finally:
        image.close()
    # (3, H, W) over the (H, W, 3) pixels, no copy: channels-last order is also what the CPU's
    # uint8 resize kernel reads fastest.
    return torch.from_numpy(array).permute(2, 0, 1)


def jpeg_for_gpu(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> bool:
    """True for a JPEG the GPU decoder should get: 8-bit RGB or grayscale, within the size limit
    (read from the header only). CMYK and other JPEGs are decoded by Pillow on the CPU; a header
    that does not parse raises :class:`DecodeError` right away."""
    if not is_jpeg(data):
        return False
    image = _open(data, max_pixels)
    try:
        return image.mode in ("RGB", "L")
    finally:
        image.close()


# -- GPU decoding ----------------------------------------------------------------------------

BatchDecoder = Callable[[list[Tensor], torch.device], list[Tensor]]


def torchvision_gpu_decoder() -> tuple[BatchDecoder | None, str]:
    """torchvision.io's batched GPU JPEG decoder, or (None, why not). Any import failure (a
    torchvision built for another torch fails with errors such as ``operator torchvision::nms
    does not exist``) means no GPU decoding, never an error."""
    if not torch.cuda.is_available():
        return None, "no CUDA device"
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except Exception as e:  # any failure to import means "not available"
        return None, f"torchvision.io does not import: {type(e).__name__}: {e}"

    def decode(encoded: list[Tensor], device: torch.device) -> list[Tensor]:
        return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))

    return decode, "torchvision.io.decode_jpeg"


def probe_decoder(decoder: BatchDecoder, device: torch.device) -> str | None:
    """None if ``decoder`` decodes a small JPEG on ``device`` correctly, else why not (e.g. a
    torchvision whose image extension failed to load imports fine but cannot decode)."""
    Image = pillow()  # the module, under its usual name
    pixels = np.zeros((16, 16, 3), dtype=np.uint8)
    pixels[:, :, 0] = 200
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    encoded = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
    try:
        image = _checked(decoder([encoded], device), 1)[0]
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    if tuple(image.shape) != (3, 16, 16) or abs(image[0].float().mean().item() - 200) > 8:
        return "it decoded a test JPEG wrongly"
    return None


def decode_jpegs_on_device(encoded: Sequence[Tensor], device: torch.device,
                           decoder: BatchDecoder,
                           max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Tensor | DecodeError]:
    """Decodes a batch of JPEG byte tensors (CPU, 1-D uint8) on ``device``.

    One batched call first; if it fails, each image alone, so one bad JPEG cannot sink the batch.
    An image the GPU decoder rejects is decoded by Pillow and moved to the device; one Pillow
    rejects too comes back as its :class:`DecodeError`, in place.
    """
    if not encoded:
        return []
    try:
        return _checked(decoder(list(encoded), device), len(encoded))
    except Exception:  # fall back to one image at a time
        pass
    results: list[Tensor | DecodeError] = []
    for data in encoded:
        try:
            results.append(_checked(decoder([data], device), 1)[0])
        except Exception:  # the CPU decoder decides and gives the reason
            try:
                cpu = decode_pil(data.numpy().tobytes(), max_pixels)
                results.append(cpu.to(device, non_blocking=True))
            except DecodeError as e:
                results.append(e)
    return results


def _checked(images: list[Tensor], count: int) -> list[Tensor]:
    if len(images) != count:
        raise RuntimeError(f"decoder returned {len(images)} images for {count} inputs")
    for image in images:
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise RuntimeError(f"decoder returned {image.dtype} {list(image.shape)}")
    return images

