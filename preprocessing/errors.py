"""Exception families of the project: one type per kind of bad input, each message naming the
file (and line, where it applies) and what to do about it."""

from __future__ import annotations

from pathlib import Path


class G2IError(Exception):
    """Base class of every error this project raises on purpose."""


class GenotypeFormatError(G2IError):
    """A PLINK fileset (.bed/.bim/.fam), a SNP catalog or a clinical table is malformed.

    ``path`` and ``line`` (1-based, or None) say where; the message repeats them.
    """

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f", line {line}"
            where += ": "
        super().__init__(where + message)
        self.path = None if path is None else Path(path)
        self.line = line


class ImageFormatError(G2IError):
    """A NIfTI image is unreadable or has an unusable shape, affine or intensity range."""

    def __init__(self, message: str, path: str | Path | None = None):
        super().__init__(f"{path}: {message}" if path is not None else message)
        self.path = None if path is None else Path(path)
