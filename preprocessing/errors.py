"""Exception families of the project: one type per kind of bad input, each message naming the
file (and line, where it applies) and what to do about it."""

from __future__ import annotations

from pathlib import Path


class G2IError(Exception):
    """Base class of every error this project raises on purpose."""


class LocatedError(G2IError):
    """An error about one file, and optionally one line of it.

    ``path`` and ``line`` (1-based, or None) say where; the message starts with them:
    ``"<path>, line <n>: <message>"``.
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


class GenotypeFormatError(LocatedError):
    """A PLINK fileset (.bed/.bim/.fam), a SNP catalog or its genotype IDs are malformed."""


class ClinicalTableError(LocatedError):
    """A site's clinical table (clinical.csv) is unreadable, empty, or its IDs do not join."""


class ModelInputError(LocatedError):
    """A bad input to a model command (model folder, genotype table)."""


class ImageFormatError(G2IError):
    """A NIfTI image is unreadable or has an unusable shape, header, affine or intensity range,
    or is not registered to MNI152."""

    def __init__(self, message: str, path: str | Path | None = None):
        super().__init__(f"{path}: {message}" if path is not None else message)
        self.path = None if path is None else Path(path)


class SiteDataError(G2IError):
    """A problem with a site as a whole: no usable subject, an output folder another run
    holds, an empty split."""


class NoUsableSubjectsError(SiteDataError):
    """No subject of the site has a diagnosis, genotypes and a readable scan.

    ``reasons`` counts the subjects per exclusion reason."""

    def __init__(self, message: str, reasons: dict[str, int]):
        super().__init__(message)
        self.reasons = reasons


class CacheLockedError(SiteDataError):
    """Another run is building the same prepared-dataset folder."""


class EmptySplitError(SiteDataError):
    """A prepared dataset has no subject in the requested split."""
