"""The ``batch-ast`` command line: submit, status, collect, cancel."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import freshness
from .backends import EXECUTORS, BackendError
from .config import ConfigError
from .exporting import ExportError, export, options_from_arguments
from .exporting import add_arguments as add_export_arguments
from .manifest import ManifestError
from .options import DispatchError, from_arguments
from .options import add_arguments as add_option_arguments
from .private import PrivateStateError, state_dir, use_private_caches
from .record import DEFAULT_METRIC
from .store import ResultsError, ResultsRoot, write_atomic
from .study import StudyError, study_csv
from .text import describe_os_error, inert, short_path
from .version import VERSION

if TYPE_CHECKING:
    from . import api
    from .status import SubmissionStatus

# The stages' modules (pandas, numpy, the index, the report) are imported by the commands that use
# them: every command paid 0.7 s for them, and a report with nothing new to show takes less.


def _say(args: argparse.Namespace, message: str) -> None:
    if not getattr(args, "quiet", False):
        print(message, flush=True)


PLAN_LINES = 200  # plan lines of each kind; the rest is counted, not listed


def differing_params(specs: list, most: int = 6) -> list[str]:
    """The hyperparameters whose values differ between ``specs`` (at most ``most``, in the
    config's order): what tells a study's rows apart in the plan listing."""
    if len(specs) < 2:
        return []
    names = [f.name for f in dataclasses.fields(specs[0].params)]
    return [n for n in names if len({repr(getattr(s.params, n)) for s in specs}) > 1][:most]


def _print_plan(prepared: api.Prepared) -> None:
    from .plan import chunk  # import cost

    plan, rows_per_job, batch_rows = prepared.plan, prepared.rows_per_job, prepared.packing.batch_rows
    jobs = len(chunk(plan.to_run, rows_per_job)) if plan.to_run else 0
    batched = f", optimised up to {batch_rows} at a time" if batch_rows > 1 else ""
    if prepared.packing.processes_per_job > 1:
        batched += f", {prepared.packing.processes_per_job} row processes per job"
    print(
        f"plan: {plan.total_rows} row(s): {len(plan.to_run)} to run in {jobs} job(s) "
        f"({rows_per_job} row(s) per job{batched}), {len(plan.done)} already done, "
        f"{len(plan.failed_before)} failed before, {len(plan.duplicates)} duplicate(s)"
    )
    print(f"executor: {prepared.backend.name} ({prepared.why})")
    shown = differing_params(plan.to_run) or ["optimizer", "iterations", "n_filters"]
    for spec in plan.to_run[:PLAN_LINES]:
        label = f" {spec.name!r}" if spec.name else ""
        settings = " ".join(f"{name}={getattr(spec.params, name)}" for name in shown)
        print(
            f"  run   row {spec.row}{label} [{spec.id}] {Path(spec.content).name} + {Path(spec.style).name}  "
            f"{settings}"
        )
    if len(plan.to_run) > PLAN_LINES:
        print(f"  ... and {len(plan.to_run) - PLAN_LINES} more row(s) to run")
    for spec in plan.done[:PLAN_LINES]:
        print(f"  skip  row {spec.row} [{spec.id}]: already done (use --force to redo)")
    if len(plan.done) > PLAN_LINES:
        print(f"  ... and {len(plan.done) - PLAN_LINES} more row(s) already done")
    for spec in plan.failed_before[:PLAN_LINES]:
        print(
            f"  skip  row {spec.row} [{spec.id}]: failed before "
            "(--retry-failed reruns transient failures, --force reruns any)"
        )
    for row, first in plan.duplicates[:PLAN_LINES]:
        print(f"  skip  row {row}: duplicate of row {first} (same inputs and settings)")
    if len(plan.duplicates) > PLAN_LINES:
        print(f"  ... and {len(plan.duplicates) - PLAN_LINES} more duplicate(s)")
    if plan.to_run:
        _print_sizing(prepared)


def _print_sizing(prepared: api.Prepared) -> None:
    """What the jobs will probably need, from the root's finished rows (``Prepared.sizing``)."""
    from .costing import MIN_HISTORY  # import cost

    needs, unknown = prepared.sizing()
    if needs:
        print(f"sizing (p95 of finished rows in {prepared.results.root}'s index, same preset, similar "
              "content length):")
        for need in needs:
            print(need.describe())
        for need in needs:
            for warning in need.warnings():
                print(f"warning: {warning}", file=sys.stderr)
    if unknown:
        names = ", ".join(p or "(none)" for p in unknown)
        print(f"sizing: no estimate for preset(s) {names}: fewer than {MIN_HISTORY} finished rows of "
              "similar length with usage figures in the index (collect after a first run)")


class _Progress:
    """``Submission.wait``'s progress callback: a bar on a terminal, a line per change in logs."""

    def __init__(self, total: int, quiet: bool) -> None:
        from tqdm import tqdm

        self.interactive = sys.stderr.isatty() and not quiet
        self.quiet = quiet
        self.bar = tqdm(total=total, unit="row", desc="rows", disable=not self.interactive)
        self.last_line = ""

    def __call__(self, status: SubmissionStatus) -> None:
        from . import api  # import cost

        counts = status.counts
        self.bar.update(sum(counts.get(state, 0) for state in api.FINISHED_STATES) - self.bar.n)
        self.bar.set_postfix(ok=counts.get("ok", 0), failed=counts.get("failed", 0))
        line = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        if not self.interactive and line != self.last_line and not self.quiet:
            print(f"progress: {line}", flush=True)
            self.last_line = line


def _failed_before_lines(prepared: api.Prepared) -> list[str]:
    """One line per row that failed in an earlier submission and is not rerun, with its error."""
    lines = []
    for spec, record in prepared.failed_before():
        error = str(record.get("error", "")).splitlines()[0][:200] if record.get("error") else ""
        again = (
            "--retry-failed reruns it"
            if record.get("retryable")
            else "--force reruns it (it failed on its inputs or settings)"
        )
        lines.append(f"  row {spec.row} [{spec.id}] failed before: {error} ({again})")
    return lines


def _report_failed_before(lines: list[str]) -> None:
    if lines:
        print(f"{len(lines)} row(s) of this manifest failed before and were not rerun:", file=sys.stderr)
        print("\n".join(lines), file=sys.stderr)


def cmd_submit(args: argparse.Namespace) -> int:
    from . import api  # import cost
    from .status import format_status  # import cost

    prepared = api.prepare(
        args.manifest, args.results, args.executor, args.profile, config=args.config,
        site_profile=not args.no_profile, options=from_arguments(args), dry_run=args.dry_run,
        progress=not args.quiet,
    )
    if prepared.profile is not None and prepared.profile_source != "--profile":
        print(
            f"profile: {prepared.profile} ({prepared.profile_source}; --no-profile ignores it)",
            file=sys.stderr,
        )
    if not args.quiet or args.dry_run:
        _print_plan(prepared)
    failed_lines = _failed_before_lines(prepared)
    if args.dry_run:
        return 0
    submission = prepared.launch()
    for spec in prepared.plan.to_run:
        if spec.id in submission.busy:
            _say(args, f"  skip  row {spec.row} [{spec.id}]: {submission.busy[spec.id]}")
    results = prepared.results
    if submission.record is None:
        _say(args, "nothing to run")
        report = api.collect(results.root)
        _say(args, f"index: {results.index_path} ({report.rows} rows)")
        _report_failed_before(failed_lines)
        return 1 if failed_lines else 0
    print(
        f"submitted {len(submission.record.rows)} row(s) as {len(submission.jobs)} job(s): "
        f"{submission.record.array_job_id} (submission {submission.id}; logs in "
        f"{submission.record.submitit_folder})",
        flush=True,
    )
    wait = args.wait if args.wait is not None else prepared.backend.waits_by_default
    if not wait:
        print(
            f"follow with: batch-ast status {args.results}   collect with: batch-ast collect {args.results}"
        )
        return 0
    progress = _Progress(len(submission.record.rows), args.quiet)
    final = submission.wait(progress)
    progress.bar.close()
    for error in submission.job_errors:
        print(inert(error), file=sys.stderr)
    report = api.collect(results.root)
    print(format_status(final))
    for problem in report.skipped:
        print(f"warning: {inert(problem)}", file=sys.stderr)
    print(f"index: {results.index_path} ({report.rows} rows); traces: {results.traces_path}")
    _report_failed_before(failed_lines)
    counts = final.counts
    return 1 if any(counts.get(k, 0) for k in ("failed", "lost", "invalid")) or failed_lines else 0


def cmd_collect(args: argparse.Namespace) -> int:
    from . import api  # import cost

    results = ResultsRoot(args.results)
    report = api.collect(results, progress=not args.quiet)
    for problem in report.skipped:
        print(f"warning: skipped {inert(problem)}", file=sys.stderr)
    print(
        f"index: {results.index_path} ({report.rows} rows); traces: {results.traces_path} ({report.traces} "
        "points)"
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from . import api  # import cost
    from .costing import cost_lines  # import cost
    from .status import format_status  # import cost

    results = ResultsRoot(args.results)
    report = api.root_status(results, every=args.all)
    for problem in report.problems:
        print(f"warning: {inert(problem)} (not a valid submission: ignored)")
    if not report.statuses:
        print(f"no submissions under {results.root}")
        return 0
    for status in report.statuses:
        print(format_status(status, every_failure=args.rows, results=results))
        for line in cost_lines(status.finished):
            print(inert(line))
    if report.older:
        print(f"({report.older} older submission(s) of this root not shown: status --all)")
    return 1 if report.any_failed else 0  # like submit: scripts can branch on it


def cmd_cancel(args: argparse.Namespace) -> int:
    from . import api  # import cost

    submission = api.find_submission(args.results, args.submission)
    if submission is None:
        print("no submission to cancel", file=sys.stderr)
        return 1
    if not submission.cancel():
        print(f"submission {submission.id}: nothing queued or running")
        return 0
    done = submission.last_cancel
    print(inert(f"submission {submission.id}: cancelled {job_summary(done.job_ids)}"))
    print(f"  released the claims of {done.released} row(s) that had not begun"
          + (f"; {done.running} running row(s) stopped, their claims lapse as their jobs leave the queue"
             if done.running else ""))
    return 0


def job_summary(job_ids: list[str], shown: int = 5) -> str:
    """Job ids said short: array tasks (``<array>_<task>``) counted per array, other jobs listed,
    at most ``shown`` of each named (a study's 2,422 task ids were one 20 KB line)."""
    arrays: dict[str, int] = {}
    single: list[str] = []
    for job_id in job_ids:
        array, sep, task = job_id.partition("_")
        if sep and task.isdigit():
            arrays[array] = arrays.get(array, 0) + 1
        else:
            single.append(job_id)
    parts = []
    if arrays:
        named = [f"{a} ({n} task{'s' if n > 1 else ''})" for a, n in list(arrays.items())[:shown]]
        more = f" and {len(arrays) - shown} more" if len(arrays) > shown else ""
        parts.append(f"{sum(arrays.values())} array task(s) of {len(arrays)} array(s): "
                     f"{', '.join(named)}{more}")
    if single:
        more = f" and {len(single) - shown} more" if len(single) > shown else ""
        parts.append(f"{len(single)} job(s): {' '.join(single[:shown])}{more}")
    return "; ".join(parts)


def cmd_report(args: argparse.Namespace) -> int:
    settings = freshness.report_settings(args.metric, args.top, not args.descending)
    if not args.portable:
        current = freshness.current_report(ResultsRoot(args.results), args.output, settings)
        if current is not None:  # nothing to collect, and the report there is this one
            print(f"report: {current} (up to date)")
            return 0
    from .index import status_counts  # import cost
    from .report import write_report  # import cost

    path = write_report(
        args.results,
        args.output,
        metric=args.metric,
        top=args.top,
        ascending=not args.descending,
        portable=args.portable,
    )
    print(f"report: {path}")
    counts = status_counts(args.results)
    unfinished = counts.get("pending", 0) + counts.get("running", 0)
    if unfinished:
        print(f"note: {unfinished} row(s) are still pending or running, and the report shows them so: "
              f"`batch-ast status {args.results}` follows them; run `report` again once they are done "
              "(or submit with --wait, which returns when they are)")
    return 0


def cmd_expand(args: argparse.Namespace) -> int:
    """Write a study's manifest: the CSV that `submit STUDY.yaml` runs, row for row."""
    if args.output:
        out = Path(args.output)
        text = study_csv(args.study, relative_to=out.resolve().parent, for_spreadsheets=True)
        write_atomic(out, lambda fh: fh.write(text.encode("utf-8")))
        print(f"manifest: {out} ({text.count(chr(10)) - 1} rows)")
    else:
        sys.stdout.write(study_csv(args.study, for_spreadsheets=True))
    return 0


def cmd_analyse(args: argparse.Namespace) -> int:
    import pandas as pd

    from .analysis import analyse, group_columns, plot_effect  # import cost
    from .index import load_index, varying_params  # import cost

    ResultsRoot(args.results).require_results_root()
    df = load_index(args.results)
    try:
        by = group_columns(args.param)
        table = analyse(df, by, args.metric)
    except KeyError as exc:
        print(f"error: {inert(exc.args[0])}", file=sys.stderr)
        return 2
    print(inert(f"{args.metric} of the ok rows by {', '.join(by)}: n, mean, std, SEM and the 95 % "
                "confidence interval of the mean (--metric and --param choose others)"))
    if "config" in by:
        varying = [p for p in varying_params(df) if p != "seed"]
        print(inert("config: " + (" ".join(varying) + " (the varying hyperparameters but seed)" if varying
                                  else "the rows differ by seed alone")))
    with pd.option_context("display.width", 200, "display.max_colwidth", 80, "display.max_rows", 500):
        for line in table.to_string(index=False, float_format=lambda v: f"{v:.4g}").splitlines():
            print(inert(line))  # a group's value is a manifest's text: shown inert, line by line
    if args.output:
        print(f"plot: {plot_effect(table, by, args.metric, args.output)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export the root's finished rows to a tracker; 1 when some rows were skipped as unreadable."""
    chosen = dataclasses.asdict(options_from_arguments(args))
    report = export(args.results, progress=not args.quiet, **chosen)
    print("\n".join(map(inert, report.lines())))
    return 1 if report.skipped.get("their record cannot be read") else 0


def _error_text(exc: BaseException) -> str:
    """What the CLI prints of a user error: one line, every character shown inert — but a
    manifest's problems each on a line of their own (each still inert: a cell cannot forge one)."""
    if isinstance(exc, ManifestError):
        return "\n  ".join([inert(f"{short_path(exc.manifest)}: {len(exc.problems)} problem(s)"),
                            *map(inert, exc.problems)])
    return inert(exc)


def add_results_root(p: argparse.ArgumentParser) -> None:
    """The results root, positional or as ``--results ROOT`` (as submit takes it): either form,
    in every command that reads a root; ``resolve_results_root`` checks both were not given."""
    p.add_argument("results", nargs="?", default=None, help="results root (default: results)")
    p.add_argument("--results", dest="results_option", metavar="ROOT", help="the same, as an option")


def resolve_results_root(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if "results_option" not in vars(args):
        return  # submit (its --results has a default) and expand (no root)
    option = vars(args).pop("results_option")
    if option is not None and args.results is not None and option != args.results:
        parser.error(f"two results roots ({args.results} and --results {option}): give one")
    args.results = args.results or option or "results"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batch-ast",
        description="Batch neural audio style transfer on SLURM clusters or a laptop.",
    )

    parser.add_argument("--version", action="version", version=f"batch-ast {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_submit_command(sub)

    p = sub.add_parser("status", help="rows pending/running/ok/failed per submission")
    add_results_root(p)
    p.add_argument("--all", action="store_true", help="every submission, not only the latest")
    p.add_argument("--rows", action="store_true",
                   help="every failed, lost or invalid row with its log (default: one example of each kind)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "expand", help="write the manifest CSV of a study YAML (the rows `submit STUDY.yaml` runs)"
    )
    p.add_argument("study", help="study YAML: contents, styles, pair, presets, seeds, grid, set, name")
    p.add_argument(
        "-o", "--output", help="CSV to write (input paths relative to it); default: standard output"
    )
    p.set_defaults(func=cmd_expand)

    p = sub.add_parser("collect", help="gather records into index.parquet and traces.parquet")
    add_results_root(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_collect)

    _add_result_commands(sub)
    return parser


# Problems with what the user gave (files, settings, folders): one line on stderr, exit 2.
USER_ERRORS = (
    BackendError,
    ConfigError,
    DispatchError,
    ExportError,
    ManifestError,
    PrivateStateError,
    ResultsError,
    StudyError,
)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as the CLI prints everything it has to say: one line (not Python's two, with a path)."""
    return f"warning: {inert(message)}\n"


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done; 1 some rows failed or were lost; 2 the command could not run (the
    reason in one line on stderr: bad manifest or config, unusable results root, disk full...)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    resolve_results_root(parser, args)
    state = state_dir()
    if os.path.isdir(state):  # rows of the debug executor run in this process; HOME is not written to (and
        # a state folder this user may not enter, e.g. another's $BATCH_AST_STATE_DIR, is no error here)
        use_private_caches(state)
    warnings.formatwarning = _one_line_warning
    try:
        return args.func(args)
    except BrokenPipeError:
        # stdout closed early (`| head`): stop quietly, as Unix tools do; the exit says SIGPIPE
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return 128 + signal.SIGPIPE
    except USER_ERRORS as exc:
        print(f"error: {_error_text(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {inert(describe_os_error(exc))}", file=sys.stderr)
        return 2




def _add_submit_command(sub: Any) -> None:
    """``submit``: its own arguments, then every option of ``options.OPTIONS``."""
    p = sub.add_parser(
        "submit",
        help="validate a manifest and run its rows",
        description=(
            "Validate the manifest, plan the rows, and dispatch them with submitit. "
            "--executor auto (default) uses SLURM when sbatch is on PATH and a controller answers, "
            "otherwise submitit's local executor (processes on this machine); the choice is printed."
        ),
    )
    p.add_argument("manifest", help="CSV with columns content, style[, id][, hyperparameters...], "
                                    "or a study YAML (contents, styles, grid...: see batch-ast expand)")
    p.add_argument("--results", default="results", help="results root (default: results)")
    p.add_argument("--config", help="YAML overriding the default hyperparameters/presets")
    p.add_argument("--executor", choices=EXECUTORS, default="auto", help="default: auto")
    p.add_argument(
        "--profile",
        help="cluster profile YAML (see slurm/profile.example.yaml); default: the file "
        "named by $BATCH_AST_PROFILE, else ~/.config/batch-ast/profile.yaml if present",
    )
    p.add_argument(
        "--no-profile", action="store_true", help="use no default profile (only --profile, if given)"
    )
    add_option_arguments(p)
    p.add_argument("--dry-run", action="store_true", help="show the plan and exit")
    wait = p.add_mutually_exclusive_group()
    wait.add_argument("--wait", dest="wait", action="store_true", default=None,
                      help="follow until done, then collect (default for local/debug)")
    wait.add_argument("--no-wait", dest="wait", action="store_false",
                      help="return after submission (default for slurm)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or plan listing")
    p.set_defaults(func=cmd_submit)


def _add_result_commands(sub: Any) -> None:
    """``report``, ``analyse`` and ``cancel``: what a user does with a submission once it runs."""
    p = sub.add_parser("report", help="write a static HTML page with figures and audio players")
    add_results_root(p)
    p.add_argument(
        "-o", "--output", help="HTML file (default: <results>/report.html); its data goes beside it"
    )
    p.add_argument(
        "--portable",
        action="store_true",
        help="copy (or hard-link) the input audio beside the report, so a copied results folder still plays "
             "it",
    )
    p.add_argument(
        "--metric",
        default=None,
        help="rank the best rows of each preset by this index column (default: style_distance_heldout, "
             "a held-out measure of the written audio; final_style for rows without it)",
    )
    p.add_argument("--descending", action="store_true", help="higher metric is better")
    p.add_argument("--top", type=int, default=5, help="how many best rows to list (default: 5)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("analyse", help="a metric per group of rows: n, mean, std, SEM, 95 %% CI (and a plot)")
    add_results_root(p)
    p.add_argument(
        "--param", action="append", metavar="COL[,COL...]",
        help="index columns to group by, comma-separated or repeated (default: config, the varying "
             "hyperparameters but seed, so seeds are averaged over)")
    p.add_argument("--metric", default=DEFAULT_METRIC,
                   help=f"numeric index column to summarise (default: {DEFAULT_METRIC})")
    p.add_argument("-o", "--output", help="write the plot to this PNG")
    p.set_defaults(func=cmd_analyse)

    p = sub.add_parser(
        "export", help="put a study into MLflow, TensorBoard, Aim or W&B, one run per row",
        description="One run per row (hyperparameters, metrics, loss trace per iteration, output audio, "
                    "figures, record), keyed by the row id: exporting again adds only new or changed rows.")
    add_results_root(p)
    add_export_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("cancel", help="cancel what is still queued or running")
    add_results_root(p)
    p.add_argument("--submission", help="submission id (default: the latest)")
    p.set_defaults(func=cmd_cancel)


if __name__ == "__main__":
    sys.exit(main())
