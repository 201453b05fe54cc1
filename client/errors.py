"""Error replies that tell the server what went wrong without telling it the site's data.

Every handler runs inside ``sanitising_mod``: an exception becomes an error reply holding its
class and a one-line summary with no subject ID, path, allele or environment value; the full
traceback goes to the site's own log (the SuperNode's output, and ``<work>/site-errors.log``
when the node config names a ``log-path``).
"""

from __future__ import annotations

import csv
import logging
import os
import re
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path

from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode

log = logging.getLogger("g2i_fed.site")

# ADNI's subject IDs (011_S_0002), any path with a folder, APOE alleles and genotypes
# (e4, ε3/ε4, APOE4), nucleotide allele pairs (A/G), and quoted values.
_PATTERNS = [
    (re.compile(r"\b\d{3}_S_\d{4}\b"), "<subject>"),
    (re.compile(r"(?:[A-Za-z]:)?(?:[\w.@+~-]*[/\\])+([\w.@+-]+)"), r"\1"),
    (re.compile(r"(?i)\b(?:apoe[-_ ]?)?[eε][234](?:\s*/\s*[eε]?[234])?\b"), "<allele>"),
    (re.compile(r"(?i)\bapoe[-_ ]?[234]\b"), "<allele>"),
    (re.compile(r"\b[ACGT]\s*/\s*[ACGT]\b"), "<allele>"),
    (re.compile(r"'[^']*'|\"[^\"]*\""), "<value>"),
]
_LIMIT = 300


def sanitise(text: str, identifiers: Iterable[str] = ()) -> str:
    """One line of ``text`` with identifiers, paths, alleles, quoted and environment values
    removed (a path keeps only its file name: ``genotypes.bed``)."""
    line = " ".join(text.split())
    for ident in sorted({i for i in identifiers if len(i) >= 3}, key=len, reverse=True):
        line = line.replace(ident, "<subject>")
    for value in sorted(
        {v for v in os.environ.values() if len(v) >= 4}, key=len, reverse=True
    ):
        line = line.replace(value, "<env>")
    for pattern, repl in _PATTERNS:
        line = pattern.sub(repl, line)
    return line[:_LIMIT]


def site_identifiers(data_dir: Path | None) -> set[str]:
    """The subject IDs a site holds (clinical table and .fam), to scrub from error text."""
    ids: set[str] = set()
    if data_dir is None:
        return ids
    try:
        with open(data_dir / "clinical.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                ids.update(v for k, v in row.items() if k and k.upper() in ("PTID", "RID"))
    except (OSError, csv.Error, UnicodeDecodeError):
        pass
    try:
        for line in (data_dir / "genotypes.fam").read_text().splitlines():
            ids.update(line.split()[:2])
    except (OSError, UnicodeDecodeError):
        pass
    return ids


def error_reply(msg: Message, exc: BaseException, data_dir: Path | None) -> Message:
    """The reply the server gets for ``exc``: class and sanitised summary."""
    summary = sanitise(f"{type(exc).__name__}: {exc}", site_identifiers(data_dir))
    return Message(
        error=Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=summary), reply_to=msg
    )


def _data_dir(ctxt: Context) -> Path | None:
    """A deployed site's data folder (a simulated one relies on the ID patterns)."""
    path = ctxt.node_config.get("data-path")
    return Path(str(path)) if path else None


def sanitising_mod(
    msg: Message, ctxt: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """Catch every handler exception: full detail to the site's log, a sanitised reply out."""
    try:
        return call_next(msg, ctxt)
    except Exception as exc:  # every failure leaves as a sanitised reply
        detail = traceback.format_exc()
        log.error("site failure in %s:\n%s", msg.metadata.message_type, detail)
        log_path = str(ctxt.node_config.get("log-path", ""))
        if log_path:
            Path(log_path).parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "a") as fh:
                fh.write(f"--- {msg.metadata.message_type}\n{detail}\n")
        return error_reply(msg, exc, _data_dir(ctxt))
