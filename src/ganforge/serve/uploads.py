"""Images uploaded to `ganforge serve`: the one check every upload passes before it reaches a model
(its declared type, its pixel count, a full decode by the library's own image reader, its decoded
format). The byte size is limited earlier, while the body streams in (app.BodyLimit)."""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ganforge.data import IMAGE_FORMATS, fit_note
from ganforge.serve.store import StudyError

# what an upload may declare (browsers send the type of the file's extension) -> a file suffix for the reader
UPLOAD_TYPES = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/bmp": ".bmp",
                "image/tiff": ".tif"}  # fmt: skip
FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP", "BMP": "BMP", "TIFF": "TIFF"}  # PIL's name -> shown
MAX_UPLOAD = 10 * 1024 * 1024  # bytes: a large phone photo as JPEG
MAX_UPLOAD_PIXELS = 4096 * 4096  # checked from the header, before decoding: 16.8 MP is 50 MB as RGB
KINDS = ", ".join(FORMATS.values())


@dataclass
class Upload:
    image: torch.Tensor  # uint8 [channels, H, W] at its own size, in the channels asked for
    format: str  # as decoded: PNG, JPEG, ...
    colour: bool  # whether the file itself was in colour (before conversion to `channels`)

    def fitted(self, resolution: int, channels: int) -> str:
        """What the model's input adaptation does to it (translate() resizes and converts)."""
        size = fit_note(*self.image.shape[1:], resolution) or "used at its own size"
        if self.colour and channels == 1:
            return size + "; colour converted to gray (luma)"
        if not self.colour and channels == 3:
            return size + "; gray repeated into the 3 colour channels"
        return size


def media_type(content_type: Optional[str]) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def read_upload(body: bytes, content_type: Optional[str], channels: int) -> Upload:
    """An uploaded image file as uint8 [channels, H, W], or StudyError: 415 for a type other than
    UPLOAD_TYPES (declared or decoded), 413 for too many pixels, 422 for an empty, tiny, damaged or
    non-image file. Decoded by data.py's reader, as `ganforge translate` reads files (alpha over white,
    16-bit scaled, the decompression-bomb guard an error)."""
    from PIL import Image, UnidentifiedImageError

    from ganforge.data import open_image, pil_to_array, why_unreadable

    declared = media_type(content_type)
    if declared not in UPLOAD_TYPES:
        raise StudyError(f"unsupported upload type '{declared[:60] or 'none'}': upload a {KINDS} image "
                         f"(Content-Type {', '.join(UPLOAD_TYPES)})", 415)  # fmt: skip
    if not body:
        raise StudyError("the upload is empty (0 bytes): choose an image file", 422)
    with tempfile.TemporaryDirectory(prefix="ganforge-upload-") as tmp:
        path = Path(tmp) / f"upload{UPLOAD_TYPES[declared]}"  # the reader opens paths; private, removed at once
        path.write_bytes(body)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path, formats=IMAGE_FORMATS) as header:  # the size from the header, before any decoding
                    w, h = header.size
                if w * h > MAX_UPLOAD_PIXELS:
                    raise StudyError(f"image too large: {w}x{h} pixels, the limit is {MAX_UPLOAD_PIXELS:,} "
                                     "pixels (4096x4096); downscale it first", 413)  # fmt: skip
                img = open_image(path)
                if img.format not in FORMATS:
                    raise StudyError(f"unsupported image format {img.format}: upload a {KINDS} image", 415)
                colour = len(img.getbands()) >= 3 or img.mode == "P"
                arr = pil_to_array(img, channels)
        except StudyError:
            raise
        except UnidentifiedImageError:
            raise StudyError(f"not an image: the upload is no {KINDS} file (declared {declared})", 422) from None
        except Exception as e:  # noqa: BLE001 - every decoder failure is the file's, told by why_unreadable
            raise StudyError(f"cannot read the uploaded image: {why_unreadable(path, e)}", 422) from None
    return Upload(torch.from_numpy(arr.copy()).permute(2, 0, 1), FORMATS[img.format], colour)
