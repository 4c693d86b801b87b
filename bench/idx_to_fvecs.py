#!/usr/bin/python3
"""idx_to_fvecs.py -- convert an IDX image file (MNIST / Fashion-MNIST) to fvecs.

Usage: idx_to_fvecs.py IN.idx[.gz] OUT.fvecs [--limit N]

Each image of R x C unsigned bytes becomes one fvecs record: int32 R*C, then
R*C float32 pixel values 0..255 (unscaled, so distances match what other
benchmarks report for Fashion-MNIST with L2).

Design decisions:
 1. The IDX header is checked (magic 0x00000803 = unsigned byte, 3 dimensions;
    file size = header + n*R*C) and a mismatch is an error naming the file and
    what was found, rather than silently producing a wrong-shaped dataset.
 2. The output is written to a temporary file in the same folder and renamed,
    so an interrupted run never leaves a truncated .fvecs that a later
    "skip if it exists" step would trust.
 3. gzip is detected by its magic bytes, not the file name.
"""

import argparse
import gzip
import os
import struct
import sys
import tempfile

import numpy as np

IDX_MAGIC_U8_3D = 0x00000803
IDX_HEADER_BYTES = 16  # magic, n, rows, cols: four big-endian uint32


def read_idx_images(path):
    with open(path, "rb") as f:
        head = f.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < IDX_HEADER_BYTES:
        sys.exit(f"{path}: {len(raw)} bytes, shorter than the 16-byte IDX header")
    magic, n, rows, cols = struct.unpack(">IIII", raw[:IDX_HEADER_BYTES])
    if magic != IDX_MAGIC_U8_3D:
        sys.exit(f"{path}: IDX magic 0x{magic:08x}, expected 0x{IDX_MAGIC_U8_3D:08x} "
                 "(unsigned bytes, 3 dimensions)")
    want = IDX_HEADER_BYTES + n * rows * cols
    if len(raw) != want:
        sys.exit(f"{path}: {len(raw)} bytes, header says {n}x{rows}x{cols} = {want}")
    pixels = np.frombuffer(raw, dtype=np.uint8, offset=IDX_HEADER_BYTES)
    return pixels.reshape(n, rows * cols)


def write_fvecs(path, vectors):
    n, d = vectors.shape
    records = np.empty((n, d + 1), dtype=np.float32)
    records[:, 1:] = vectors
    records[:, :1].view(np.int32)[:] = d
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".tmp.", dir=folder)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would outlive the rename
        with os.fdopen(fd, "wb") as f:
            records.tofile(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input", help="IDX image file, optionally gzipped")
    ap.add_argument("output", help="fvecs file to write")
    ap.add_argument("--limit", type=int, default=0, help="keep only the first N images")
    args = ap.parse_args()
    images = read_idx_images(args.input)
    if args.limit > 0:
        images = images[:args.limit]
    write_fvecs(args.output, images.astype(np.float32))
    print(f"{args.output}: {images.shape[0]} x {images.shape[1]} float32")


if __name__ == "__main__":
    main()
