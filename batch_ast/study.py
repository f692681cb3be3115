"""Study stage (before the manifest): a sweep spec in YAML expanded into manifest rows.

A study names contents and styles (paths or globs), how to pair them, presets, seeds and a grid of
hyperparameter values; its expansion is an ordinary manifest, so a study row has the same row id
as the equal CSV row, and adding a value to the grid runs only the rows that value adds.

    contents: [audio/speech_*.wav]        # paths or globs, relative to this file
    styles: [audio/boogie_marabi.wav, audio/city_blues.wav]
    pair: product                         # every content with every style; zip: one with one
    presets: [quick]                      # optional; preset: quick also works
    seeds: [0, 1]                         # optional; seed: 0 also works
    grid: {content_weight: [0.43, 4.3, 43]}
    set: {iterations: 200}                # the same value on every row (optional)
    name: "{content}+{style} cw={content_weight}"   # optional row names
"""

from __future__ import annotations

import csv
import glob
import io
import itertools
import math
import os
import re
import string
from pathlib import Path
from typing import Any

from .config import PARAMS, Config, ConfigError, load_config_file
from .manifest import (
    RESOURCE_COLUMNS,
    ManifestError,
    ManifestRow,
    load_manifest,
    max_rows,
    parse_manifest,
    too_many_rows,
)

STUDY_SUFFIXES = (".yaml", ".yml")
STUDY_KEYS = ("contents", "styles", "pair", "preset", "presets", "seed", "seeds", "grid", "set", "name")
PAIRINGS = ("product", "zip")


class StudyError(ValueError):
    """A study file that cannot be expanded; the message names the file and the key."""


def is_study(path: str | Path) -> bool:
    return Path(path).suffix.lower() in STUDY_SUFFIXES


def _as_list(value: Any, key: str, source: Path) -> list[Any]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise StudyError(f"{source}: {key!r} is an empty list")
    for v in values:
        if isinstance(v, (dict, list)) or v is None:
            raise StudyError(f"{source}: {key!r} must hold plain values, got {v!r}")
    return values


def _inputs(patterns: list[Any], key: str, base: Path, source: Path) -> list[Path]:
    """Paths and globs (relative to the study's folder), in order, each glob's matches sorted."""
    out: list[Path] = []
    for pattern in patterns:
        raw = os.path.expanduser(str(pattern))
        full = raw if os.path.isabs(raw) else str(base / raw)
        if glob.has_magic(raw):
            matches = sorted(glob.glob(full))
            if not matches:
                raise StudyError(f"{source}: {key!r}: {pattern!r} matches no file")
            out += [Path(m) for m in matches]
        else:
            out.append(Path(full))  # a missing file is the manifest's to report, with its row
    return out


MAX_NAME = 1000  # characters of a row name a template may make


def _check_template(template: Any, source: Path) -> None:
    """Refuse a name template whose fields would be padded or cut to absurd widths
    (``{content:>1000000000}`` allocates a gigabyte per row) before any row is formatted."""
    if template is None:
        return
    if not isinstance(template, str) or len(template) > MAX_NAME:
        raise StudyError(f"{source}: name must be a text template of at most {MAX_NAME} characters")
    try:
        specs = [spec or "" for _, _, spec, _ in string.Formatter().parse(template)]
    except ValueError as exc:
        raise StudyError(f"{source}: name: {template[:80]!r} is not a template ({exc})") from None
    for spec in specs:
        if any(int(n) > MAX_NAME for n in re.findall(r"\d+", spec)):
            raise StudyError(
                f"{source}: name: a field width or precision above {MAX_NAME} in {template[:80]!r}"
            )


def _axes(spec: dict[str, Any], source: Path) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """(the study's axes: preset(s), seed(s) and the grid's hyperparameters, each a list of values;
    the ``set:`` values every row shares), every name and shape checked."""
    axes: dict[str, list[Any]] = {}
    for single, plural, column in (("preset", "presets", "preset"), ("seed", "seeds", "seed")):
        if single in spec and plural in spec:
            raise StudyError(f"{source}: give {single!r} or {plural!r}, not both")
        if single in spec or plural in spec:
            key = single if single in spec else plural
            axes[column] = _as_list(spec[key], key, source)
    grid = spec.get("grid") or {}
    fixed = spec.get("set") or {}
    for key, table in (("grid", grid), ("set", fixed)):
        if not isinstance(table, dict):
            raise StudyError(f"{source}: {key!r} must be a mapping of hyperparameter to value(s)")
        for name in table:
            if name not in PARAMS and name not in RESOURCE_COLUMNS:
                raise StudyError(f"{source}: {key}: unknown hyperparameter {name!r}")
            if name in axes:
                raise StudyError(f"{source}: {key}: {name!r} is already given as a top-level key")
    for name, values in grid.items():
        axes[name] = _as_list(values, f"grid: {name}", source)
    for name, value in fixed.items():
        if isinstance(value, (list, dict)) or value is None:
            raise StudyError(
                f"{source}: set: {name!r} takes one value (use grid: for several), got {value!r}"
            )
        if name in grid:
            raise StudyError(f"{source}: {name!r} is in both grid and set")
    return axes, fixed


def study_rows(path: str | Path, cap: int | None = None) -> list[dict[str, Any]]:
    """The study's rows in order (pairs, then presets, seeds and the grid, the last key fastest):
    each a mapping of manifest column → value, with absolute input paths."""
    source = Path(path)
    try:
        spec = load_config_file(source, "study")
    except ConfigError as exc:
        raise StudyError(str(exc)) from None
    unknown = [k for k in spec if k not in STUDY_KEYS]
    if unknown:
        raise StudyError(
            f"{source}: unknown key(s) {', '.join(map(repr, unknown))} (known: {', '.join(STUDY_KEYS)})"
        )
    for key in ("contents", "styles"):
        if key not in spec:
            raise StudyError(f"{source}: missing {key!r} (a path, a glob, or a list of them)")
    base = source.resolve().parent
    contents = _inputs(_as_list(spec["contents"], "contents", source), "contents", base, source)
    styles = _inputs(_as_list(spec["styles"], "styles", source), "styles", base, source)
    pairing = spec.get("pair", "product")
    if pairing not in PAIRINGS:
        raise StudyError(f"{source}: 'pair' must be one of {', '.join(PAIRINGS)}, got {pairing!r}")
    if pairing == "zip" and len(contents) != len(styles):
        raise StudyError(
            f"{source}: pair: zip needs as many contents as styles, got {len(contents)} and {len(styles)}"
        )
    pairs = (
        list(zip(contents, styles, strict=True))
        if pairing == "zip"
        else list(itertools.product(contents, styles))
    )
    axes, fixed = _axes(spec, source)

    template = spec.get("name")
    _check_template(template, source)
    total = len(pairs) * math.prod(len(v) for v in axes.values())
    if total > max_rows(cap):
        raise StudyError(f"{source}: {too_many_rows(total, max_rows(cap))}")
    varying = [k for k, v in axes.items() if len(v) > 1]
    rows = []
    for content, style in pairs:
        for combo in itertools.product(*axes.values()):
            values = dict(zip(axes, combo, strict=True))
            row = {"content": str(content), "style": str(style), **fixed, **values}
            fields = {"content": content.stem, "style": style.stem, **fixed, **values}
            if template is not None:
                try:
                    row["id"] = str(template).format(**fields)
                except (KeyError, IndexError, ValueError) as exc:
                    raise StudyError(f"{source}: name: {template!r} cannot be filled ({exc!r}); "
                                     f"fields: {', '.join(fields)}") from None
            else:
                row["id"] = " ".join([f"{content.stem}+{style.stem}", *(f"{k}={values[k]}" for k in varying)])
            rows.append(row)
    return rows


# =, +, -, @ (or their full-width forms) first, after any spaces, line breaks, zero-width or bidi
# characters that would hide them; or a tab or line break first (report-widgets.js's FORMULA is the same)
FORMULA = re.compile(
    "^[\\s\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]*[=+\\-@\uff1d\uff0b\uff0d\uff20]|^[\t\r\n]"
)


def spreadsheet_safe(label: str) -> str:
    """A label a spreadsheet will not run as a formula (OWASP's CSV-injection advice): one that
    starts like a formula, also behind spaces or invisible characters, gets a leading apostrophe."""
    return "'" + label if FORMULA.match(label) else label


def study_csv(path: str | Path, relative_to: Path | None = None, max_rows: int | None = None,
              for_spreadsheets: bool = False) -> str:
    """The study as manifest CSV text; input paths relative to ``relative_to`` where given (the
    folder the CSV will live in, so it can be moved with its audio), else absolute. With
    ``for_spreadsheets`` (``batch-ast expand``: a file people open), row names that start like a
    formula are quoted (``spreadsheet_safe``)."""
    rows = study_rows(path, max_rows)
    columns = list(dict.fromkeys(["id", "content", "style", *(k for row in rows for k in row)]))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        if relative_to is not None:
            for key in ("content", "style"):
                row[key] = os.path.relpath(row[key], relative_to)
        if for_spreadsheets:
            row["id"] = spreadsheet_safe(str(row["id"]))
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return out.getvalue()


_ROW_PROBLEM = re.compile(r"row (\d+) \(line \d+\): (.*)", re.S)
_COLUMN = re.compile(r"column '(\w+)'")
# the study keys that set a manifest column, where the column's own name is not one
_KEYS_OF_COLUMN = {"content": ("contents",), "style": ("styles",), "preset": ("presets", "preset"),
                   "seed": ("seeds", "seed")}


def study_problems(path: Path, problems: list[str], total: int) -> list[str]:
    """A study's manifest problems in the study's terms: the same problem on many rows of the
    expansion once, with the rows it hits and the line of the YAML key that caused it ("row 1
    (line 2)" names a line of a CSV the user never saw)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        lines = []
    grouped: dict[str, list[int]] = {}
    for problem in problems:
        match = _ROW_PROBLEM.fullmatch(problem)
        if match is None:
            grouped.setdefault(problem, [])
        else:
            grouped.setdefault(match.group(2), []).append(int(match.group(1)))
    out = []
    for message, rows in grouped.items():
        if not rows:
            out.append(message)
            continue
        column = _COLUMN.search(message)
        where = _key_line(lines, _KEYS_OF_COLUMN.get(column.group(1), (column.group(1),))) if column else ""
        hits = f"all {total} rows" if len(rows) == total else (
            f"rows {', '.join(map(str, rows))} of {total}" if len(rows) <= 6
            else f"{len(rows)} rows ({rows[0]}–{rows[-1]}) of {total}")
        out.append(f"{message} ({where + '; ' if where else ''}{hits})")
    return out


def _key_line(lines: list[str], keys: tuple[str, ...]) -> str:
    """'line N: <text>' of the first line that sets one of ``keys`` (top level, or in grid/set)."""
    for number, text in enumerate(lines, 1):
        if any(re.match(rf"\s*{re.escape(key)}\s*:", text) for key in keys):
            return f"line {number}: {text.strip()[:80]}"
    return ""


def load_rows(path: str | Path, config: Config, max_rows: int | None = None) -> list[ManifestRow]:
    """The validated rows of a manifest CSV or of a study YAML (expanded by ``study_csv``, its rows
    numbered as in the expansion); raise ManifestError listing all problems."""
    path = Path(path)
    if not is_study(path):
        return load_manifest(path, config, max_rows)
    try:
        text = study_csv(path, max_rows=max_rows)
    except StudyError as exc:
        raise ManifestError(path, [str(exc).removeprefix(f"{path}: ")]) from None
    try:
        return parse_manifest(text, path, config, max_rows)
    except ManifestError as exc:
        total = max(0, sum(1 for _ in csv.reader(io.StringIO(text))) - 1)  # data rows of the expansion
        raise ManifestError(path, study_problems(path, exc.problems, total)) from None
