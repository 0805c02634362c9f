"""Compressed copies of test inputs, made with the libraries (no tools needed on PATH)."""

from __future__ import annotations

import bz2
import gzip
import lzma

import zstandard

__all__ = ["COMPRESSORS", "compress"]

COMPRESSORS = ("gzip", "bzip2", "xz", "zstd")


def compress(kind: str, data: bytes) -> bytes:
    """``data`` as a ``kind`` stream (zstd in two frames, gzip in two members: readers must join them)."""
    half = len(data) // 2
    if kind == "gzip":
        return gzip.compress(data[:half], mtime=0) + gzip.compress(data[half:], mtime=0)
    if kind == "bzip2":
        return bz2.compress(data)
    if kind == "xz":
        return lzma.compress(data)
    if kind == "zstd":
        zc = zstandard.ZstdCompressor()
        return zc.compress(data[:half]) + zc.compress(data[half:])
    raise ValueError(kind)
