"""Manifest stage: read the CSV that pairs content and style files, validate every row up front.

Every problem of every row is collected before anything is submitted, so a user fixes a broken
manifest in one pass instead of one error per submission.
"""

from __future__ import annotations

import csv
import difflib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import PARAMS, Config, ConfigError, Params, coerce, exact_int
from .text import short_path

REQUIRED_COLUMNS = ("content", "style")
OPTIONAL_COLUMNS = ("id",)
# Per-row job resources (override the cluster profile); they do not change the result or the row id.
RESOURCE_COLUMNS = {"timeout_min": int, "gpus": int, "mem_gb": float, "cpus": int}
# Smallest usable value of each: a 0-minute limit kills the job at once, 0 CPUs or 0 GB is refused
# by SLURM, 0 GPUs is a CPU job.
RESOURCE_MINIMUM = {"timeout_min": 1, "gpus": 0, "mem_gb": 0.001, "cpus": 1}


def parse_resource(column: str, cell: str) -> int | float:
    """A resource cell as its type, at least its minimum; ValueError with the rule otherwise."""
    kind, low = RESOURCE_COLUMNS[column], RESOURCE_MINIMUM[column]
    rule = f"expected {'an integer' if kind is int else 'a number'} >= {low:g}, got {cell[:40]!r}"
    try:
        value = exact_int(cell) if kind is int else float(cell)
    except ValueError:
        raise ValueError(rule) from None
    if value is None or not low <= value < float("inf"):  # NaN fails this too
        raise ValueError(rule)
    return value


class ManifestError(ValueError):
    """The manifest cannot be used; ``problems`` holds one message per problem found."""

    def __init__(self, manifest: Path, problems: list[str]):
        self.manifest = manifest
        self.problems = problems
        super().__init__(f"{short_path(manifest)}: {len(problems)} problem(s)\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class ManifestRow:
    """One validated manifest row: resolved input paths and fully resolved hyperparameters."""

    row: int  # 1-based data-row number (the header is not counted)
    line: int  # line number in the CSV file, for error messages
    name: str  # the user's optional `id` label ("" if none); never used for file names
    content: Path
    style: Path
    params: Params
    resources: dict[str, Any] = field(default_factory=dict)

    def where(self) -> str:
        return f"row {self.row} (line {self.line})"


def _resolve_path(raw: str, base: Path) -> Path:
    path = Path(raw).expanduser()
    return path if path.is_absolute() else (base / path)


# Inputs are hashed whole before planning; a file larger than this is refused up front rather
# than read for minutes (a sparse 1 TB "WAV" once hung --dry-run). BATCH_AST_MAX_INPUT_MB overrides.
DEFAULT_MAX_INPUT_MB = 4096


def max_input_bytes() -> int:
    raw = os.environ.get("BATCH_AST_MAX_INPUT_MB", "")
    return int(float(raw) * 2**20) if raw.replace(".", "", 1).isdigit() else DEFAULT_MAX_INPUT_MB * 2**20


DEFAULT_MAX_TOTAL_INPUT_GB = 64
MAX_TOTAL_INPUT_ENV = "BATCH_AST_MAX_TOTAL_INPUT_GB"


def max_total_input_bytes() -> int:
    """What all distinct inputs of one submission may hold together (every byte is hashed at
    submit and again by the jobs): $BATCH_AST_MAX_TOTAL_INPUT_GB, else 64 GiB."""
    raw = os.environ.get(MAX_TOTAL_INPUT_ENV, "")
    gb = float(raw) if raw.replace(".", "", 1).isdigit() else DEFAULT_MAX_TOTAL_INPUT_GB
    return int(gb * 2**30)


def _check_audio_path(path: Path, limit: int) -> tuple[str | None, int]:
    """(what is wrong with an input file or None, its size): checked once per distinct file."""
    try:
        if not path.exists():
            return "file not found", 0
        if not path.is_file():
            return "not a regular file", 0
        size = path.stat().st_size
        if size > limit:
            return (f"{size / 2**20:.0f} MiB, above the {limit / 2**20:.0f} MiB input limit "
                    "(set BATCH_AST_MAX_INPUT_MB to raise it)"), size
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}", 0
    return None, size


def load_manifest(path: str | Path, config: Config, max_rows: int | None = None) -> list[ManifestRow]:
    """Parse and validate a manifest CSV; raise ManifestError listing all problems. A study YAML
    is ``study.load_rows``'s: it expands to this CSV form and then comes here."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ManifestError(path, [f"cannot read manifest: {exc.strerror}"]) from None
    try:
        text = raw.decode("utf-8-sig")  # tolerate the BOM that spreadsheet programs write
    except UnicodeDecodeError as exc:
        raise ManifestError(path, [f"not UTF-8 text: {exc}"]) from None
    return parse_manifest(text, path, config, max_rows)


DEFAULT_MAX_ROWS = 100_000
MAX_ROWS_ENV = "BATCH_AST_MAX_ROWS"


def max_rows(explicit: int | None = None) -> int:
    """Rows one manifest or study may have: ``explicit`` (``submit --max-rows``), else
    $BATCH_AST_MAX_ROWS, else DEFAULT_MAX_ROWS. Past it a submission is refused before any row is
    expanded, hashed or planned: a 1 KB study can multiply to 10^12 rows."""
    if explicit is not None:
        return explicit
    raw = os.environ.get(MAX_ROWS_ENV, "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_MAX_ROWS


def too_many_rows(count: int | str, limit: int) -> str:
    return (f"{count} rows, above the cap of {limit} rows per submission (--max-rows N or "
            f"${MAX_ROWS_ENV} raises it; or split the study)")


def _csv_records(text: str, path: Path, cap: int | None) -> list[tuple[int, list[str]]]:
    """(line, cells) of every non-blank CSV record, the header first; at most the row cap's."""
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)
    most_rows = max_rows(cap)
    records = []
    try:
        for rec in reader:
            if any(cell.strip() for cell in rec):
                records.append((reader.line_num, rec))
                if len(records) > most_rows + 1:  # the header and the cap's rows
                    raise ManifestError(path, [too_many_rows(f"at least {most_rows + 1}", most_rows)])
    except csv.Error as exc:
        raise ManifestError(path, [f"line {reader.line_num}: not CSV this reader accepts ({exc})"]) from None
    if not records:
        raise ManifestError(path, ["manifest is empty: expected a header with content,style"])
    return records


def _header_problems(header: list[str], line: int) -> list[str]:
    """What is wrong with the header's columns: missing, unknown (with a guess) or repeated."""
    columns = [c.strip().lower() for c in header]
    problems: list[str] = []
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        hint = ""
        if header and (header[0].lower().endswith((".wav", ".mp3", ".flac", ".ogg")) or "/" in header[0]):
            hint = " (the first line looks like data: is the header missing?)"
        problems.append(f"header (line {line}): missing column(s) {', '.join(missing)}{hint}")
    known = set(REQUIRED_COLUMNS) | set(OPTIONAL_COLUMNS) | set(PARAMS) | set(RESOURCE_COLUMNS)
    for col in columns:
        if col not in known:
            close = difflib.get_close_matches(col, sorted(known), n=1)
            guess = f"did you mean {close[0]!r}? " if close else ""
            problems.append(
                f"header (line {line}): unknown column {col!r} "
                f"({guess}known: content, style, id, {', '.join([*PARAMS, *RESOURCE_COLUMNS])})"
            )
    dupes = {c for c in columns if columns.count(c) > 1}
    if dupes:
        problems.append(f"header (line {line}): duplicate column(s) {', '.join(sorted(dupes))}")
    return problems


def _row_files(cells: dict[str, str], base: Path, checked: dict[Path, tuple[str | None, int]], limit: int,
               where: str, problems: list[str]) -> dict[str, Path]:
    """The row's content and style files that exist and can be read (``checked`` caches the
    checks: a study names few files in many rows); a problem for each that cannot."""
    files: dict[str, Path] = {}
    for col in REQUIRED_COLUMNS:
        if not cells[col]:
            problems.append(f"{where}: column {col!r} is empty")
            continue
        file = _resolve_path(cells[col], base)
        if file not in checked:
            checked[file] = _check_audio_path(file, limit)
        issue = checked[file][0]
        if issue:
            problems.append(f"{where}: column {col!r}: {short_path(file)}: {issue}")
        files[col] = file
    return files


def _row_values(
    cells: dict[str, str], where: str, problems: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the row's hyperparameter overrides, its resource requests), a problem for each bad cell."""
    overrides: dict[str, Any] = {}
    for col, cell in cells.items():
        if col in PARAMS and cell != "":
            try:
                overrides[col] = coerce(col, cell)
            except ConfigError as exc:
                problems.append(f"{where}: column {col!r}: {exc}")
    resources: dict[str, Any] = {}
    for col in RESOURCE_COLUMNS:
        cell = cells.get(col, "")
        if cell == "":
            continue
        try:
            resources[col] = parse_resource(col, cell)
        except ValueError as exc:
            problems.append(f"{where}: column {col!r}: {exc}")
    return overrides, resources


def parse_manifest(text: str, path: Path, config: Config, cap: int | None = None) -> list[ManifestRow]:
    """The rows of a manifest's CSV text, every one validated; ManifestError lists all problems."""
    records = _csv_records(text, path, cap)
    header_line, header = records[0]
    problems = _header_problems(header, header_line)
    if problems:
        raise ManifestError(path, problems)
    columns = [c.strip().lower() for c in header]
    checked: dict[Path, tuple[str | None, int]] = {}  # a study names few files in many rows
    limit = max_input_bytes()
    rows: list[ManifestRow] = []
    for number, (line, rec) in enumerate(records[1:], start=1):
        where = f"row {number} (line {line})"
        if len(rec) != len(columns):
            problems.append(f"{where}: expected {len(columns)} fields, got {len(rec)}")
            continue
        cells = {col: cell.strip() for col, cell in zip(columns, rec, strict=True)}
        files = _row_files(cells, path.parent, checked, limit, where, problems)
        overrides, resources = _row_values(cells, where, problems)
        try:
            params = config.params(overrides)
        except ConfigError as exc:
            problems.append(f"{where}: column 'preset': {exc}")
            continue
        if params.hop_length >= params.n_fft:  # equal frames would not overlap: the inverse STFT fails
            problems.append(f"{where}: hop_length {params.hop_length} must be below n_fft {params.n_fft} "
                            "(Griffin-Lim's inverse STFT needs overlapping frames)")
        if len(files) == 2:
            rows.append(ManifestRow(row=number, line=line, name=cells.get("id", ""), content=files["content"],
                                    style=files["style"], params=params, resources=resources))
    if not records[1:]:
        problems.append("manifest has a header but no rows")
    total = sum(size for _, size in checked.values())
    if total > max_total_input_bytes():
        problems.append(
            f"its {len(checked)} distinct input files hold {total / 2**30:.1f} GiB together, above the "
            f"{max_total_input_bytes() / 2**30:.0f} GiB one submission may read "
            f"(set {MAX_TOTAL_INPUT_ENV} to raise it, or split the manifest)"
        )
    if problems:
        raise ManifestError(path, problems)
    return rows
