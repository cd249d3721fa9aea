"""JPEG decoding on the GPU (nvJPEG, through torchvision) when the encoder runs on CUDA.

There the encoder embeds ~16,000 ViT-B-32 images/s, while worker processes decoding with Pillow
manage ~3,000/s on 16 cores and take seconds to start: CPU decoding is the bound. So JPEGs take
another road. Threads of this process read and hash each file and check its header (plain 8-bit
RGB or greyscale, under the pixel cap, an end-of-image marker, the EXIF orientation); nvJPEG
decodes them in batches; the GPU turns, resizes and crops them (the same geometry as `fit_square`),
and the pixels never leave the GPU.

Every file the GPU road does not take goes to the usual worker pool, whose hardened Pillow path
gives the verdict: other formats, CMYK or unusually large JPEGs, JPEGs without an end-of-image
marker (nvJPEG fills a truncated file with grey, Pillow refuses it), and any file nvJPEG rejects.
The pool starts only when the first such file turns up, so a folder of photos never waits for it.
"""

from __future__ import annotations

import functools
import io
import os
import queue
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from index.records import FileState, MediaInfo
from retrieval.encoders.config import ModelInputs
from retrieval.indexing.prepare import DECODED, Prepared, Task, read_and_hash
from retrieval.indexing.workers import DecodePool, put_unless_stopped, stop_producer
from retrieval.media.limits import MediaLimits

if TYPE_CHECKING:
    import torch

_DONE = object()
# nvJPEG decodes a whole batch at once; its throughput levels off near 256 files (measured on an
# H200: 11,100 files/s at 64, 21,400 at 256, 20,100 at 1024).
BATCH_FILES = 256
# A batch is resized in one padded float canvas on the GPU: bound it (2**27 pixels: 1.5 GiB).
CANVAS_PIXELS = 2**27
# Larger pictures go to Pillow, whose reduced-scale JPEG decoding serves them better.
MAX_GPU_PIXELS = 48 * 2**20
READ_THREADS = 4  # reading scaled to 4 threads on the H200 machine (9,500 files/s), no further
READ_CHUNK = 32  # files per task of a read thread: fewer hand-offs between threads
_JPEG_START = b"\xff\xd8\xff"
_END_OF_IMAGE = b"\xff\xd9"
_ORIENTATION_TAG = 0x0112
_PLAIN_FRAMES = (0xC0, 0xC1, 0xC2)  # baseline, extended and progressive Huffman-coded


@dataclass(frozen=True)
class JpegHeader:
    width: int  # as stored, before the EXIF orientation
    height: int
    orientation: int  # EXIF 1..8; 1: as stored


@dataclass(frozen=True)
class _Jpeg:
    task: Task
    state: FileState
    data: bytes
    header: JpegHeader


def jpeg_header(data: bytes, limits: MediaLimits) -> JpegHeader | None:
    """The header of a JPEG the GPU decodes as Pillow would, or None: leave it to Pillow.

    A scan of the markers before the image data, in this process and holding the GIL, so it is
    kept to what the decision needs (Pillow's own parser costs ~50 us a file, a third of a core
    at the rates a GPU indexes at). Anything unusual is None, never an error: Pillow judges it.
    """
    if not data.startswith(_JPEG_START) or not data[-64:].rstrip(b"\x00").endswith(_END_OF_IMAGE):
        return None
    position, frame, orientation = 2, None, 1
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None  # bytes between markers
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            position += 2
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        segment = data[position + 4 : position + 2 + length]
        if length < 2 or len(segment) != length - 2:
            return None
        if marker in _PLAIN_FRAMES:
            if len(segment) < 6 or segment[0] != 8 or segment[5] not in (1, 3):
                return None  # 12-bit, CMYK, odd component counts
            frame = (int.from_bytes(segment[3:5], "big"), int.from_bytes(segment[1:3], "big"))
        elif 0xC3 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return None  # lossless, hierarchical or arithmetic-coded frames
        elif marker == 0xEE and segment.startswith(b"Adobe"):
            return None  # Adobe's colour transform flag decides whether the channels are RGB
        elif marker == 0xE1 and segment.startswith(b"Exif\x00\x00"):
            orientation = _exif_orientation(segment[6:])
        elif marker == 0xDA:  # start of scan: the header is over
            break
        position += 2 + length
    if frame is None or not 0 < frame[0] * frame[1] <= min(limits.max_image_pixels, MAX_GPU_PIXELS):
        return None  # no frame, or Pillow's TOO_LARGE verdict (or its reduced-scale decoding) is wanted
    return JpegHeader(frame[0], frame[1], orientation)


def _exif_orientation(tiff: bytes) -> int:
    """The Orientation tag of the first image directory; 1 when absent or malformed (as Pillow)."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    directory = int.from_bytes(tiff[4:8], order)
    count = int.from_bytes(tiff[directory : directory + 2], order)
    for entry in range(directory + 2, directory + 2 + 12 * count, 12):
        if entry + 12 > len(tiff):
            break
        if int.from_bytes(tiff[entry : entry + 2], order) == _ORIENTATION_TAG:
            value = int.from_bytes(tiff[entry + 8 : entry + 10], order)
            return value if 1 <= value <= 8 else 1
    return 1


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation to a (C, H, W) tensor, as `ImageOps.exif_transpose` does."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-2, -1)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-2, -1)
    if orientation == 6:
        return image.rot90(-1, (-2, -1))
    if orientation == 7:
        return image.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return image.rot90(1, (-2, -1))
    return image


def _bicubic(x: torch.Tensor) -> torch.Tensor:
    """Pillow's bicubic kernel (a = -0.5)."""
    import torch

    a, x = -0.5, x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _resize_weights(sources: torch.Tensor, targets: torch.Tensor, offsets: torch.Tensor, size: int,
                    longest: int) -> torch.Tensor:
    """(N, size, longest): row j of image i holds the weights Pillow's antialiased bicubic resize
    from `sources[i]` to `targets[i]` pixels gives its output pixel `offsets[i] + j`."""
    import torch

    scale = sources / targets  # (N,)
    stretch = scale.clamp(min=1.0)  # downscaling widens the kernel: that is the antialiasing
    centres = (offsets[:, None] + torch.arange(size, device=scale.device) + 0.5) * scale[:, None]  # (N, size)
    source = torch.arange(longest, device=scale.device)
    weights = _bicubic((source + 0.5 - centres[:, :, None]) / stretch[:, None, None])
    weights = weights * (source < sources[:, None, None])
    return weights / weights.sum(-1, keepdim=True)


def fit_square_batch(images: list[torch.Tensor], size: int) -> torch.Tensor:
    """(C, H, W) uint8 images of any sizes -> (N, size, size, C) float in 0..255: shortest side
    resized to `size` with Pillow's antialiased bicubic filter, centre crop (the geometry of
    `retrieval.media.images.fit_square`).

    A separable resize is two matrix products, A_rows @ image @ A_cols^T, so the whole batch, padded
    into one canvas, is resized by two batched products: one call for 256 pictures instead of
    several small kernels each, whose launch costs held the GIL for ~90 us a picture.
    """
    import torch

    heights = [image.shape[-2] for image in images]
    widths = [image.shape[-1] for image in images]
    canvas = torch.zeros((len(images), images[0].shape[0], max(heights), max(widths)), dtype=torch.float32,
                         device=images[0].device)
    for index, image in enumerate(images):
        canvas[index, :, : heights[index], : widths[index]] = image
    # Sizes to 8 digits are exact in float32; the weights are built where the canvas is (on the
    # CPU, 256 pictures' weights take a second; on the GPU, nothing).
    shape = torch.tensor([heights, widths], dtype=torch.float32, device=canvas.device)  # (2, N)
    scale = size / shape.min(dim=0).values
    full = torch.clamp(torch.round(shape * scale), min=size)  # the resized picture before cropping
    offsets = torch.div(full - size, 2, rounding_mode="floor")
    rows, columns = (_resize_weights(shape[axis], full[axis], offsets[axis], size, canvas.shape[2 + axis])
                     for axis in (0, 1))
    resized = rows[:, None] @ canvas @ columns[:, None].transpose(-1, -2)  # (N, C, size, size)
    return resized.clamp_(0.0, 255.0).permute(0, 2, 3, 1)


def _bounded_map(executor: ThreadPoolExecutor, function: Callable, items: Iterable, window: int) -> Iterator:
    """`executor.map` that reads at most `window` items ahead (their file contents are in memory)."""
    pending: deque[Future] = deque()
    for item in items:
        pending.append(executor.submit(function, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class GpuJpegStage:
    """A decode stage (see pipeline.DecodeStage): JPEGs decoded on `device`, the rest by a worker pool.

    `device` is the encoder's; on a CPU device the same code runs with torchvision's CPU decoder,
    which is how the tests exercise it on machines without a GPU.
    """

    def __init__(self, inputs: ModelInputs, limits: MediaLimits, workers: int, device: torch.device | str,
                 batch_files: int = BATCH_FILES, read_threads: int = READ_THREADS) -> None:
        self.inputs = inputs
        self.limits = limits
        self.workers = workers
        self.device = device
        self.batch_files = batch_files
        self.read_threads = read_threads
        # torchvision 0.29 points to TorchCodec for decoding; its nvJPEG path still works, and is
        # what the machines we measure on have. Say it once in the docs, not once per batch.
        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                                category=DeprecationWarning)

    def __call__(self, tasks: list[Task], skip_hashes: frozenset[str]) -> Iterator[Prepared]:
        # Lists of results, a batch or a chunk at a time: a queue hand-off per file would wake the
        # consumer thousands of times a second, each time a GIL hand-off.
        results: queue.Queue = queue.Queue(maxsize=4)
        stop = threading.Event()
        producer = threading.Thread(target=self._produce, args=(tasks, skip_hashes, results, stop),
                                    name="xmodal-gpu-jpeg", daemon=True)
        producer.start()
        try:
            while (item := results.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield from item
        finally:
            stop_producer(results, producer, stop)

    def _produce(self, tasks: list[Task], skip_hashes: frozenset[str], results: queue.Queue,
                 stop: threading.Event) -> None:
        put = functools.partial(put_unless_stopped, results, stop=stop)
        for_pillow: list[Task] = []
        pool = DecodePool(self.workers, self.inputs, self.limits, skip_hashes)
        starting: Future | None = None
        starter = ThreadPoolExecutor(1)
        try:
            batch: list[_Jpeg] = []
            with ThreadPoolExecutor(self.read_threads) as readers:
                def read(chunk: list[Task]) -> list[Prepared | Task | _Jpeg]:
                    return [self._read(task, skip_hashes) for task in chunk]

                chunks = (tasks[start : start + READ_CHUNK] for start in range(0, len(tasks), READ_CHUNK))
                for chunk in _bounded_map(readers, read, chunks, 2 * self.batch_files // READ_CHUNK):
                    if stop.is_set():
                        return
                    done = [result for result in chunk if isinstance(result, Prepared)]
                    if done:
                        put(done)
                    for result in chunk:
                        if isinstance(result, Task):
                            for_pillow.append(result)
                            # Start the workers now, while the GPU decodes: their start-up is seconds.
                            starting = starting or starter.submit(pool.__enter__)
                        elif isinstance(result, _Jpeg):
                            if batch and _canvas_pixels(batch + [result]) > CANVAS_PIXELS:
                                put(self._decode(batch, for_pillow))
                                batch = []
                            batch.append(result)
                            if len(batch) >= self.batch_files:
                                put(self._decode(batch, for_pillow))
                                batch = []
                put(self._decode(batch, for_pillow))
            if for_pillow:
                (starting or starter.submit(pool.__enter__)).result()  # raises WorkerStartError
                for prepared in pool.run(for_pillow):
                    if not put([prepared]):
                        return
        except BaseException as error:  # surfaced in the consumer's thread
            put(error)
        finally:
            if starting is not None and starting.exception() is None:  # waits for a start under way
                pool.__exit__(None, None, None)
            starter.shutdown(wait=False)
            put(_DONE)

    def _read(self, task: Task, skip_hashes: frozenset[str]) -> Prepared | Task | _Jpeg:
        """The file's outcome when there is nothing to decode, a JPEG for the GPU, or the task back
        for the worker pool (it reads the file again: only files the GPU does not take pay that)."""
        read = read_and_hash(task, self.limits, skip_hashes)
        if isinstance(read, Prepared):
            return read
        data, state = read
        header = jpeg_header(data, self.limits)
        return task if header is None else _Jpeg(task, state, data, header)

    def _decode(self, batch: list[_Jpeg], for_pillow: list[Task]) -> list[Prepared]:
        """The batch's pixels, square, on the device; files nvJPEG refuses are added to `for_pillow`."""
        from torchvision.io import ImageReadMode, decode_jpeg

        if not batch:
            return []
        encoded = encoded_tensors(batch)
        try:
            images = decode_jpeg(encoded, device=self.device, mode=ImageReadMode.RGB)
        except RuntimeError:  # one bad file fails the whole batch: find it
            images = [_decode_one(data, self.device) for data in encoded]
        decoded, upright = [], []
        for jpeg, image in zip(batch, images, strict=True):
            if image is None or tuple(image.shape[-2:]) != (jpeg.header.height, jpeg.header.width):
                for_pillow.append(jpeg.task)  # nvJPEG refused it, or disagrees with its header
            else:
                decoded.append(jpeg)
                upright.append(orient(image, jpeg.header.orientation))
        if not decoded:
            return []
        squares = fit_square_batch(upright, self.inputs.image_size)
        return [Prepared(jpeg.task.path, DECODED, jpeg.state,
                         MediaInfo("image", "jpeg", width=image.shape[-1], height=image.shape[-2]), pixels=pixels)
                for jpeg, image, pixels in zip(decoded, upright, squares, strict=True)]


def encoded_tensors(batch: list[_Jpeg]) -> list[torch.Tensor]:
    """The files' bytes as the uint8 tensors `decode_jpeg` takes (writable copies: torch asks for them)."""
    import torch

    return [torch.frombuffer(bytearray(jpeg.data), dtype=torch.uint8) for jpeg in batch]


def _canvas_pixels(batch: list[_Jpeg]) -> int:
    """Pixels of the padded canvas `fit_square_batch` will resize the batch in."""
    upright = [(j.header.height, j.header.width) if j.header.orientation >= 5 else (j.header.width, j.header.height)
               for j in batch]  # EXIF orientations 5-8 turn the picture by a quarter
    return len(batch) * max(w for w, _ in upright) * max(h for _, h in upright)


def _decode_one(data: torch.Tensor, device) -> torch.Tensor | None:
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(data, device=device, mode=ImageReadMode.RGB)
    except RuntimeError:
        return None


def gpu_jpeg_available(device: torch.device) -> bool:
    """Whether torchvision can decode JPEGs on `device` (a CUDA build with nvJPEG), unless
    XMODAL_GPU_DECODE=0: nvJPEG runs in the indexing process, without the workers' per-file deadline
    and crash isolation, so a user whose files trip it needs a way back to the Pillow workers."""
    if device.type != "cuda" or os.environ.get("XMODAL_GPU_DECODE", "1") == "0":
        return False
    try:
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        probe = torch.frombuffer(bytearray(_probe_jpeg()), dtype=torch.uint8)
        return decode_jpeg([probe], device=device, mode=ImageReadMode.RGB)[0].shape[-2:] == (8, 8)
    except Exception:  # noqa: BLE001 - no torchvision, a CPU-only build, no nvJPEG: decode with Pillow
        return False


def _probe_jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, "JPEG")
    return buffer.getvalue()
