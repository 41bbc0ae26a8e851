"""Frame indexes of files the index holds none for (instances indexed before frame indexes
existed), made from the file once per version of it: then their frames go out like any other's,
ranges of the file, not a parse of the whole file for every frame asked.

A file's version is its identity and stat (device, inode, size, modification time): a file
replaced by rename, as an instance sent again is, is another key. A file no index can describe
(deflated, big endian, bit-packed frames) is remembered as such, and its frames are parsed.
Each web process keeps its own, bounded.
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict

from pipeline import frames

FILES = 1024
"""Files remembered; an index is 16 bytes a frame."""
_known: OrderedDict[tuple[int, int, int, int], bytes | None] = OrderedDict()


async def of_file(fd: int) -> bytes | None:
    """The frame index of the open file ``fd``; None when it has none (read it by parsing)."""
    found = os.fstat(fd)
    version = (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns)
    if version in _known:
        _known.move_to_end(version)
        return _known[version]
    # Through a descriptor of the thread's own: the file it reads is the one ``fd`` is, whatever
    # has been renamed over its path, and stays so if this request is cancelled and closes ``fd``.
    own = os.dup(fd)
    try:
        running = asyncio.get_running_loop().run_in_executor(None, _index, own)
    except BaseException:
        os.close(own)  # never submitted
        raise
    index = await running
    _known[version] = index
    if len(_known) > FILES:
        _known.popitem(last=False)
    return index


def _index(fd: int) -> bytes | None:
    try:
        return frames.file_frame_index(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
