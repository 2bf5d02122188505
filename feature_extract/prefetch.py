"""Prepare the next batch on a background thread while the current one runs on the device.

Why a thread: nvjpeg's batched decode (``torchvision.io.decode_jpeg`` on CUDA) blocks its
calling thread until the decode stream is done (it ends with ``cudaStreamSynchronize``), and in
the main loop that wait sat between launching batch i's forward pass and copying batch i-1's
features out, so decoding and the model took turns instead of overlapping. The decode releases
the GIL (checked: a Python loop runs at full speed beside it), so one thread that decodes batch
i+1 while the main thread launches batch i and writes batch i-1 keeps both the JPEG engines and
the SMs busy. The DataLoader's worker processes still do the reading and CPU decoding.

On CUDA the thread issues its copies and kernels on a side stream; the consumer's stream waits
for an event recorded after them, and the tensors are marked as used on the consumer's stream
so the caching allocator does not hand their memory back to the side stream too early
(https://pytorch.org/docs/stable/notes/cuda.html#cuda-streams).

Hand-written because the pieces that exist do either half: the DataLoader prefetches in worker
processes (which cannot hold CUDA tensors for the main process cheaply), and a plain
``queue.Queue`` thread knows nothing of streams. Items come back in order; an exception in the
thread is raised in the consumer; a consumer that stops early (``--strict``, ``limit_batches``)
stops the thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch

T = TypeVar("T")
_DONE = object()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def prefetched(
    items: Iterable[Any],
    prepare: Callable[[Any], T],
    device: torch.device,
    depth: int = 2,
) -> Iterator[tuple[Any, T]]:
    """Yield ``(item, prepare(item))`` for each item, ``prepare`` running up to ``depth`` items
    ahead on a background thread (on CUDA: on a side stream, synchronised as described above)."""
    cuda = device.type == "cuda"
    if cuda and device.index is None:  # the thread's current device is its own: name it
        device = torch.device("cuda", torch.cuda.current_device())
    side = torch.cuda.Stream(device) if cuda else None
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            if cuda:
                torch.cuda.set_device(device)
            for item in items:
                if stop.is_set():
                    return
                if cuda:
                    with torch.cuda.stream(side):
                        out = prepare(item)
                        ready = torch.cuda.Event()
                        ready.record(side)
                else:
                    out, ready = prepare(item), None
                if not put((item, out, ready)):
                    return
            put(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            put(_Failed(e))

    thread = threading.Thread(target=work, name="stage1-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            got = q.get()
            if got is _DONE:
                return
            if isinstance(got, _Failed):
                raise got.error
            item, out, ready = got
            if ready is not None:
                current = torch.cuda.current_stream(device)
                current.wait_event(ready)
                for t in _tensors(out):
                    if t.is_cuda:
                        t.record_stream(current)
            yield item, out
    finally:
        stop.set()
        thread.join(timeout=30)
