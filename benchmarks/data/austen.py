"""Jane Austen's six novels as plain text, read from Debian's r-cran-janeaustenr package.

The novels are public domain (Project Gutenberg texts, cleaned by the R package janeaustenr, MIT).
Debian ships them inside an R lazy-load database (data/Rdata.rdx + Rdata.rdb); this module reads
that database with a small reader of R's XDR serialization, so neither R nor any extra Python
package is needed. Provenance and hashes: benchmarks/data/README.md. Fetch the data with
`make austen` (apt-get download of the pinned .deb, unpacked under .data/, nothing installed
system-wide).

    python benchmarks/data/austen.py            # prints each novel's size and writes nothing
    python benchmarks/data/austen.py --write D  # D/<novel>.txt, one file per novel
"""

from __future__ import annotations

import gzip
import os
import struct
import sys
import zlib
from pathlib import Path

# make austen unpacks the .deb here (relative to the repository root); PICLI_AUSTEN_DIR overrides.
DEFAULT_ROOT = Path(__file__).resolve().parents[2] / ".data" / "janeaustenr"
RDATA = "usr/lib/R/site-library/janeaustenr/data"
NOVELS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey",
          "persuasion")


def data_dir() -> Path:
    root = Path(os.environ.get("PICLI_AUSTEN_DIR", DEFAULT_ROOT))
    return root / RDATA


def available() -> bool:
    return (data_dir() / "Rdata.rdx").is_file()


class _Reader:
    """R's binary XDR serialization (R Internals, 'Serialization formats'), only the types a
    lazy-load index and character vectors use."""

    def __init__(self, payload: bytes):
        self.buf, self.pos, self.refs = payload, 0, []

    def _int(self) -> int:
        (value,) = struct.unpack_from(">i", self.buf, self.pos)
        self.pos += 4
        return value

    def _bytes(self, n: int) -> bytes:
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def read(self):
        if self._bytes(2) != b"X\n":
            raise ValueError("not an R XDR serialization")
        version = self._int()
        self._int(), self._int()  # writer's and minimal reader's R versions
        if version == 3:
            self._bytes(self._int())  # native encoding name
        return self._item()

    def _item(self):
        flags = self._int()
        sexptype, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if sexptype == 254:  # NILVALUE_SXP
            return None
        if sexptype == 255:  # REFSXP: index packed in the flags, else in the next int
            index = flags >> 8 or self._int()
            return self.refs[index - 1]
        if sexptype == 1:  # SYMSXP: a CHARSXP; later references point back to it
            name = self._item()
            self.refs.append(name)
            return name
        if sexptype == 9:  # CHARSXP
            length = self._int()
            return None if length == -1 else self._bytes(length).decode("utf-8", "replace")
        if sexptype == 2:  # LISTSXP (pairlist): attributes, tag, car, then the cdr as a list
            items = {}
            while sexptype == 2:
                if has_attr:
                    self._item()
                tag = self._item() if has_tag else None
                items[tag] = self._item()
                flags = self._int()
                sexptype, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
            if sexptype != 254:
                raise ValueError(f"pairlist ended by type {sexptype}")
            return items
        if sexptype in (10, 13):  # LGLSXP, INTSXP
            n = self._int()
            value = list(struct.unpack_from(f">{n}i", self.buf, self.pos))
            self.pos += 4 * n
        elif sexptype == 14:  # REALSXP
            n = self._int()
            value = list(struct.unpack_from(f">{n}d", self.buf, self.pos))
            self.pos += 8 * n
        elif sexptype in (16, 19):  # STRSXP, VECSXP
            value = [self._item() for _ in range(self._int())]
        else:
            raise ValueError(f"R type {sexptype} is not read here")
        if has_attr:
            attributes = self._item()
            names = attributes.get("names")
            if names is not None and sexptype == 19:
                value = dict(zip(names, value))
        return value


def _unpack(blob: bytes):
    # A lazy-load record: 4-byte big-endian uncompressed length, then a zlib stream (R's default).
    (length,) = struct.unpack_from(">i", blob, 0)
    payload = zlib.decompress(blob[4:])
    if len(payload) != length:
        raise ValueError("truncated lazy-load record")
    return _Reader(payload).read()


def novels() -> dict[str, str]:
    """Every novel as one string (lines joined by newlines, blank lines kept), in NOVELS order."""
    directory = data_dir()
    if not available():
        raise FileNotFoundError(
            f"{directory}/Rdata.rdx not found: run `make austen` (Debian r-cran-janeaustenr)")
    # The index is a gzip-compressed RDS file; the database holds the lazy-load records.
    index = _Reader(gzip.decompress((directory / "Rdata.rdx").read_bytes())).read()
    database = (directory / "Rdata.rdb").read_bytes()
    texts = {}
    for name in NOVELS:
        offset, size = index["variables"][name]
        lines = _unpack(database[offset:offset + size])
        texts[name] = "\n".join(line or "" for line in lines)
    return texts


if __name__ == "__main__":
    texts = novels()
    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        out = Path(sys.argv[2])
        out.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():
            (out / f"{name}.txt").write_text(text, encoding="utf-8")
    for name, text in texts.items():
        print(f"{name}: {len(text)} characters, {len(text.split())} words")
