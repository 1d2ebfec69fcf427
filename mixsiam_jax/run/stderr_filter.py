"""Lines that native libraries write to stderr while a run reads its data, kept off the console.

libjpeg, inside TensorFlow's JPEG decoder, prints its own warnings ("Corrupt JPEG
data: 249 extraneous bytes before marker 0x67", "Unsupported marker type ...")
straight to file descriptor 2, from tf.data's threads, with no file name and no
switch to turn them off. The program already names each bad image once
(data/decode.py's BadImageLog), so these lines only bury it: a folder with 40
such files printed over a thousand of them in 40 s. While ``dropped`` is
active, file descriptor 2 is a pipe read by a thread that forwards every line
to the real stderr except those that start with one of the given prefixes;
Python's own writes go through the same pipe, so the order of lines is kept.
"""
import contextlib
import os
import sys
import threading
from typing import Callable, Iterator, Sequence

# Every warning and error text of libjpeg(-turbo) (jerror.h, JWRN_* and JERR_*), as printed:
# TensorFlow's decoder prints an error's text too before it turns it into a failed op.
LIBJPEG_MESSAGES = (
    # Warnings (JWRN_*).
    "Corrupt JPEG data", "Premature end of JPEG file", "Unsupported marker type",
    "Invalid SOS parameters", "Inconsistent progression sequence", "Warning: unknown JFIF",
    "Warning: thumbnail image size", "Unknown Adobe color transform",
    "Application transferred too many scanlines",
    # Errors (JERR_*) a damaged or unusual file can raise.
    "Invalid JPEG file", "Not a JPEG file", "Bogus marker length", "Bogus Huffman table",
    "Bogus DQT index", "Bogus DHT index", "Bogus DAC", "Bogus sampling factors",
    "Bogus JPEG colorspace", "Bogus input colorspace", "Bogus virtual array access",
    "Bogus message code", "Bogus parameter", "JPEG datastream contains no image",
    "Huffman table 0x", "Huffman code size table overflow", "Missing Huffman code table entry",
    "Quantization table 0x", "Arithmetic table 0x", "Application transferred too few scanlines",
    "Input file read error", "Empty input file", "Premature end of input file",
    "Unsupported JPEG process", "Unsupported JPEG data precision", "Unsupported color conversion",
    "Invalid component ID", "Invalid crop request", "Invalid progressive parameters",
    "Invalid scan script", "Invalid memory pool code", "Improper call to JPEG library",
    "DCT coefficient out of range", "IDCT output block size", "Sampling factors too large",
    "Too many color components", "Empty JPEG image", "Didn't expect more than one scan",
    "Maximum supported image dimension", "Image too wide for this implementation",
    "Insufficient memory (case", "Scan script does not transmit all data",
    "Fractional sampling not implemented", "CCIR601 sampling not implemented",
    "Requested feature was omitted at compile time", "Not implemented yet",
    "Suspension not allowed here", "Buffer passed to JPEG library is too small")

# Seconds to wait, on exit, for the forwarding thread to write out what is still in the pipe.
DRAIN_SECONDS = 2.0


@contextlib.contextmanager
def dropped(prefixes: Sequence[str] = LIBJPEG_MESSAGES) -> Iterator[Callable[[], None]]:
  """Drops the stderr lines (file descriptor 2) that start with one of ``prefixes``.

  On exit file descriptor 2 is restored and everything written before is
  forwarded first. A line is forwarded when its newline arrives (a partial line
  when the block ends).

  Args:
    prefixes: the starts of the lines to drop.

  Yields:
    ``restore()``: ends the filtering early (what the exit does; later calls do
    nothing), for a thread that ends the process with os._exit inside the block.
  """
  original = os.dup(2)
  read_end, write_end = os.pipe()
  os.dup2(write_end, 2)
  os.close(write_end)
  forward = threading.Thread(target=_forward, args=(read_end, original, tuple(
      p.encode() for p in prefixes)), name="stderr-filter", daemon=True)
  forward.start()
  lock, restored = threading.Lock(), []

  def restore() -> None:
    with lock:
      if restored:
        return
      restored.append(True)
      # Restoring fd 2 closes the pipe's last write end: the thread reads the rest, then EOF.
      sys.stderr.flush()
      os.dup2(original, 2)
      forward.join(DRAIN_SECONDS)
      os.close(original)

  try:
    yield restore
  finally:
    restore()


def _forward(read_end: int, out: int, prefixes: Sequence[bytes]) -> None:
  """Copies lines from ``read_end`` to ``out``, dropping those that start with a prefix."""
  pending = b""
  with os.fdopen(read_end, "rb", buffering=0) as pipe:
    while True:
      chunk = pipe.read(65536)
      if not chunk:
        break
      *lines, pending = (pending + chunk).split(b"\n")
      _write_all(out, b"".join(line + b"\n" for line in lines if not line.startswith(prefixes)))
  if not pending.startswith(prefixes):
    _write_all(out, pending)


def _write_all(fd: int, data: bytes) -> None:
  while data:
    data = data[os.write(fd, data):]
