"""Overlapping media decoding with the model, two ways.

- prefetch: threads decode the next items while the caller runs a forward pass that releases the GIL
  (torch, mediapipe). Used by vision_clip and face_mediapipe.
- DecoderProcess: a child process decodes the next item while the caller does GIL-bound Python work
  (librosa). Used by audio_librosa.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TypeVar

from features.extractors.base import MediaItem, status_row
from features.store import FeatureRow

log = logging.getLogger(__name__)

T = TypeVar("T")

# Requests a DecoderProcess holds ahead of the caller. More than one clip, so that on a busy machine the
# decoder can run ahead whenever it gets a core, instead of the caller waiting on each clip in turn;
# a few clips of mono float32 audio are a few MB at most.
DECODE_AHEAD = 4


def prefetch(fn: Callable[[MediaItem], T], items: list[MediaItem], workers: int,
             lookahead: int) -> Iterator[tuple[int, T]]:
    """(index, fn(items[index])) in input order, computed by `workers` threads up to `lookahead` items ahead.

    This is what overlaps decoding with the model: the caller runs the forward pass (torch, mediapipe:
    both release the GIL) on what it has while the threads decode the next items. The bounded window
    keeps memory flat on long shards. For GIL-bound consumers use DecoderProcess instead.
    """
    lookahead = max(1, lookahead)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode") as pool:
        window: deque = deque()
        submitted = 0
        try:
            while submitted < len(items) and len(window) < lookahead:
                window.append((submitted, pool.submit(fn, items[submitted])))
                submitted += 1
            while window:
                i, fut = window.popleft()
                result = fut.result()
                if submitted < len(items):
                    window.append((submitted, pool.submit(fn, items[submitted])))
                    submitted += 1
                yield i, result
        finally:
            for _, fut in window:
                fut.cancel()


class DecoderProcess:
    """A child Python process that decodes media for this one, in order, one step ahead.

    Why not threads: a thread can't overlap PyAV decoding with GIL-bound Python work such as librosa.
    Each time the decoder thread returns from FFmpeg it waits for the GIL (Python's 5 ms switch
    interval), and both slow down; measured here, threads made decoding + features 2x slower than
    doing them in turn. Why not multiprocessing: its pools re-import the caller's __main__ in the child,
    can't start from daemonic processes (Dask workers), and add helper threads that contend for the GIL
    again. This is a plain subprocess on two pipes, running features.media.serve_decode_requests; it
    imports only features.media, and exits when its pipe closes, including when this process is killed.
    """

    def __init__(self):
        import features

        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        code = f"from features.media import serve_decode_requests; serve_decode_requests({req_r}, {rep_w})"
        package_root = str(Path(features.__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
        try:
            # Its own session: a Ctrl-C in the terminal goes to this process, which then closes the pipe.
            self.proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(req_r, rep_w), env=env,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            os.close(req_r)
            os.close(rep_w)
        self._requests = Connection(req_w, readable=False)
        self._replies = Connection(rep_r, writable=False)

    def map(self, requests: list[tuple[str, str, dict]], depth: int = DECODE_AHEAD) -> Iterator[tuple]:
        """The reply to each (kind, path, kwargs) request, in order. The process works on the next
        request while the caller handles a reply. EOFError or OSError: the process died while working
        on the oldest unanswered request."""
        sent = 0
        while sent < min(depth, len(requests)):
            self._requests.send(requests[sent])
            sent += 1
        for _ in range(len(requests)):
            reply = self._replies.recv()
            if sent < len(requests):
                self._requests.send(requests[sent])
                sent += 1
            yield reply

    @property
    def exit_code(self) -> int | None:
        return self.proc.poll()

    def close(self) -> None:
        for conn in (self._requests, self._replies):
            conn.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class DecoderSlot:
    """An extractor's DecoderProcess: started on first use, replaced after a crash, or given up on."""

    def __init__(self):
        self.decoder: DecoderProcess | None = None
        self.disabled = False

    def get(self) -> DecoderProcess | None:
        if self.decoder is None and not self.disabled:
            try:
                self.decoder = DecoderProcess()
            except OSError as exc:
                log.warning("can't start a decoder process (%s); decoding inline", exc)
                self.disabled = True
        return self.decoder

    def discard(self) -> None:
        if self.decoder is not None:
            self.decoder.close()
            self.decoder = None

    def disable(self) -> None:
        self.discard()
        self.disabled = True


def decode_in_process(slot: DecoderSlot, items: list[MediaItem], request: Callable[[MediaItem], tuple[str, str, dict]],
                      inline: Callable[[MediaItem], T | FeatureRow]) -> Iterator[tuple[int, T | FeatureRow]]:
    """(index, decoded media or status row) for each item, in order, decoded by the slot's process.

    Items without media get their row at once. If the decoder process dies on a file, that file gets
    decode_error and a fresh process takes the rest; if it dies twice without finishing anything
    (it can't run here), the rest is decoded inline by `inline`.
    """
    pending: deque[int] = deque()
    for i, item in enumerate(items):
        if item.media_path is None:
            yield i, status_row(item, "missing_file", "no media file for this utterance in the manifest")
        else:
            pending.append(i)
    deaths_in_a_row = 0
    while pending and (decoder := slot.get()) is not None:
        try:
            for reply in decoder.map([request(items[i]) for i in pending]):
                i = pending.popleft()
                deaths_in_a_row = 0
                yield i, (reply[1] if reply[0] == "ok" else status_row(items[i], reply[1], reply[2]))
        except (EOFError, OSError) as exc:
            code = decoder.exit_code
            deaths_in_a_row += 1
            if deaths_in_a_row >= 2:
                log.warning("the decoder process keeps dying (exit code %s: %s); decoding inline", code, exc)
                slot.disable()
                break
            slot.discard()
            i = pending.popleft()
            log.warning("the decoder process died on %s (exit code %s)", items[i].media_path, code)
            yield i, status_row(items[i], "decode_error",
                                f"{items[i].media_path}: the decoder process died on this file (exit code {code})")
    for i in pending:
        yield i, inline(items[i])
