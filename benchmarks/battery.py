"""The battery: hundreds of bad and edge inputs against every public API, and how each call ends.

    python -m benchmarks.battery                     # every case, report in benchmarks/results/battery.md/.json
    python -m benchmarks.battery --api SISE,metrics  # only APIs whose name starts with one of these
    python -m benchmarks.battery --no-cli            # skip the command-line cases (a subprocess each)

A demanding Captum user passes NaN baselines, NumPy integers, targets in
every format Captum accepts (and some it does not), tensors made under
``inference_mode``, models in ``train()`` mode, models that return tuples
or NaN. Each :class:`~benchmarks.battery_core.Case` says what one such call
should do: end with a clear error naming the argument (``expect="error"``),
be accepted with a correct result (``expect="accept"``, optionally checked
against a reference), or either (``expect="either"``). This script runs the
calls and classifies how each one *did* end:

- ``clear_error``: :class:`~captum_global.errors.InvalidArgumentError`, its
  type variant, or :class:`~captum_global.errors.NonFiniteOutputError`, with
  a message naming the argument (for the command line: exit status 2, a
  usage message naming the option, no traceback);
- ``plain_error``: a ``ValueError``/``TypeError``/``AssertionError`` that
  names the argument but is not one of the package's error types;
- ``vague_error``: one of those errors not naming the argument (or a
  command-line failure without a traceback but with the wrong status);
- ``cryptic_error``: any other exception (``IndexError``, ``RuntimeError``,
  ``AttributeError``, a traceback from the command line, ...);
- ``accepted``: returned, and the result passed the case's check;
- ``refused_valid``: a valid input (``expect="accept"``) raised;
- ``silent_wrong``: a bad input returned a result, or a result failed its
  check (e.g. a map returned despite a NaN baseline);
- ``state_changed``: the call, error or not, left the model changed
  (weights, batch-norm statistics, ``training`` or ``requires_grad`` flags,
  hooks), changed the global random state, or kept public state on the
  attribution object;
- ``skipped``: the API does not exist in this checkout.

A case is *as expected* when an expected error ends as ``clear_error`` and
an expected acceptance as ``accepted``. The report counts outcomes per API
and lists every case that did not end as expected. Cases live in
``benchmarks/battery_methods.py`` and ``battery_tools.py`` as data, so cases for APIs that are still
changing are added there.
"""
import argparse
import json
import platform
import random
import re
import shlex
import subprocess
import sys
import time
import traceback
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from benchmarks.battery_core import Case, CliCall, Env, all_cases
from captum_global.errors import InvalidArgumentError, InvalidArgumentTypeError, NonFiniteOutputError

__all__ = ["Outcome", "run_case", "run_battery", "to_markdown", "main", "OUTCOMES"]

OUTCOMES = ("clear_error", "plain_error", "vague_error", "cryptic_error", "accepted", "refused_valid",
            "silent_wrong", "state_changed", "skipped")
_OURS = (InvalidArgumentError, InvalidArgumentTypeError, NonFiniteOutputError)
_PLAIN = (ValueError, TypeError, AssertionError, ArithmeticError)


@dataclass
class Outcome:
    """How one case ended."""

    case: Case
    outcome: str
    detail: str
    seconds: float

    @property
    def as_expected(self) -> bool:
        return self.case.matches(self.outcome)

    def as_dict(self) -> Dict[str, Any]:
        return {"id": self.case.id, "api": self.case.api, "group": self.case.group, "expect": self.case.expect,
                "outcome": self.outcome, "as_expected": self.as_expected, "detail": self.detail[:300],
                "seconds": round(self.seconds, 3)}


def _names_argument(message: str, names: Sequence[str]) -> bool:
    return not names or any(re.search(re.escape(n), message, re.IGNORECASE) for n in names)


def _classify_exception(error: BaseException, case: Case) -> str:
    if case.expect == "accept":
        return "refused_valid"
    message = str(error)
    if isinstance(error, _OURS):
        return "clear_error" if _names_argument(message, case.names) else "vague_error"
    if isinstance(error, _PLAIN) and type(error).__module__ == "builtins":
        return "plain_error" if _names_argument(message, case.names) else "vague_error"
    return "cryptic_error"


def _global_random_state():
    return torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()


def _same_random_state(a, b) -> bool:
    return torch.equal(a[0], b[0]) and a[1] == b[1] and np.array_equal(a[2], b[2])


def _run_cli(call: CliCall, timeout: float) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "captum_global", *call.argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=call.cwd)


def _classify_cli(done: Optional[subprocess.CompletedProcess], case: Case) -> (str, str):
    if done is None:
        return ("silent_wrong" if case.expect != "accept" else "refused_valid"), "timed out: the bad input ran"
    text = (done.stderr or "") + (done.stdout or "")
    tail = text.strip().splitlines()[-1] if text.strip() else ""
    if "Traceback (most recent call last)" in text:
        return ("refused_valid" if case.expect == "accept" else "cryptic_error"), f"traceback: {tail}"
    if done.returncode == 0:
        if case.expect in ("accept", "either"):
            problem = case.check(done) if case.check else None
            return ("silent_wrong", problem) if problem else ("accepted", tail)
        return "silent_wrong", f"exit 0 on a bad input: {tail}"
    if case.expect == "accept":
        return "refused_valid", f"exit {done.returncode}: {tail}"
    if done.returncode == 2 and "usage:" in done.stderr and _names_argument(done.stderr, case.names):
        return "clear_error", tail
    return "vague_error", f"exit {done.returncode}: {tail}"


def run_case(case: Case, cli_timeout: float = 120.0) -> Outcome:
    """Run one case in a fresh :class:`Env` and classify how it ended."""
    start = time.perf_counter()
    env = Env()
    try:
        if case.available is not None and not case.available():
            return Outcome(case, "skipped", "API not present in this checkout", 0.0)
        if case.cli is not None:
            call = case.cli(env)
            try:
                done = _run_cli(call, cli_timeout)
            except subprocess.TimeoutExpired:
                done = None
            outcome, detail = _classify_cli(done, case)
            if case.after is not None and outcome in ("clear_error", "vague_error", "accepted"):
                problem = case.after(env)
                if problem:
                    outcome, detail = "state_changed", problem
            return Outcome(case, outcome, detail, time.perf_counter() - start)
        before = _global_random_state()
        try:
            result = case.call(env)
        except Exception as error:  # noqa: BLE001  (classifying every ending is the point)
            outcome, detail = _classify_exception(error, case), f"{type(error).__name__}: {error}"
        else:
            if case.expect == "error":
                outcome, detail = "silent_wrong", f"returned {_describe(result)} for a bad input"
            else:
                problem = case.check(result, env) if case.check else None
                outcome, detail = ("silent_wrong", problem) if problem else ("accepted", _describe(result))
        problems = env.state_problems()
        if not _same_random_state(before, _global_random_state()):
            problems.append("the global random state changed")
        if problems:
            outcome, detail = "state_changed", "; ".join(problems) + f" (call ended: {outcome}: {detail})"
        return Outcome(case, outcome, detail, time.perf_counter() - start)
    except Exception as error:  # noqa: BLE001  (a broken case must not stop the battery)
        return Outcome(case, "cryptic_error", f"battery case failed to set up: {error!r} "
                       f"{traceback.format_exc(limit=2)}", time.perf_counter() - start)
    finally:
        env.close()


def _describe(result: Any) -> str:
    if isinstance(result, torch.Tensor):
        finite = bool(torch.isfinite(result).all()) if result.is_floating_point() else True
        return f"Tensor{tuple(result.shape)}{'' if finite else ' holding NaN/inf'}"
    if isinstance(result, tuple):
        return "(" + ", ".join(_describe(r) for r in result) + ")"
    return type(result).__name__


def run_battery(apis: Sequence[str] = (), cli: bool = True, progress: bool = True,
                cli_timeout: float = 120.0) -> List[Outcome]:
    """Run every case (those whose API starts with one of ``apis``; all when empty)."""
    cases = [c for c in all_cases() if (not apis or any(c.api.startswith(a) for a in apis))
             and (cli or c.cli is None)]
    outcomes = []
    for i, case in enumerate(cases):
        outcome = run_case(case, cli_timeout)
        outcomes.append(outcome)
        if progress:
            mark = "ok " if outcome.as_expected else "!! "
            print(f"[{i + 1}/{len(cases)}] {mark}{case.id}: {outcome.outcome}", file=sys.stderr, flush=True)
    return outcomes


def summary(outcomes: Sequence[Outcome]) -> Dict[str, Any]:
    """Counts per API and outcome, and the cases that did not end as expected."""
    per_api: Dict[str, Counter] = OrderedDict()
    tried: Dict[str, Counter] = OrderedDict()
    for o in outcomes:
        per_api.setdefault(o.case.api, Counter())[o.outcome] += 1
        tried.setdefault(o.case.api, Counter())[o.case.expect] += 1
    expected = Counter("as_expected" if o.as_expected else "not_as_expected" for o in outcomes
                       if o.outcome != "skipped")
    return {
        "total": len(outcomes), "as_expected": expected["as_expected"],
        "not_as_expected": expected["not_as_expected"],
        "skipped": sum(1 for o in outcomes if o.outcome == "skipped"),
        "tried": {api: {"bad": c["error"], "valid": c["accept"], "either": c["either"]} for api, c in tried.items()},
        "by_expectation": {e: dict(Counter(o.outcome for o in outcomes if o.case.expect == e))
                           for e in ("error", "accept", "either")},
        "per_api": {api: {k: counts.get(k, 0) for k in OUTCOMES} for api, counts in per_api.items()},
        "open": [o.case.id for o in outcomes if not o.as_expected and o.outcome != "skipped"],
    }


def to_markdown(result: Dict[str, Any]) -> str:
    s = result["summary"]
    lines = ["# Battery of bad and edge inputs", "", f"Command: `{result['command']}`", "",
             f"{s['total']} cases; {s['as_expected']} ended as expected, {s['not_as_expected']} did not, "
             f"{s['skipped']} skipped (API absent from this checkout). Run time {result['total_seconds']:.0f} s; "
             f"torch {result['machine']['torch']}.", "",
             "An expected error is as expected when it is `clear_error` (the package's error type, naming the "
             "argument; for the command line: exit 2 with a usage message naming the option); an expected "
             "acceptance when it is `accepted` (the result passed its check). See `benchmarks/battery.py` for "
             "the outcome classes.", "", "## Counts per API", ""]
    shown = [k for k in OUTCOMES if any(v.get(k) for v in s["per_api"].values())]
    lines += ["`bad`: inputs that must be refused; `valid`: edge inputs that must be accepted (and give the right "
              "result); `either`: a clear error or a right result.", "",
              "| API | cases | bad | valid | either | " + " | ".join(shown) + " |",
              "|---|---|---|---|---|" + "---|" * len(shown)]
    for api, counts in s["per_api"].items():
        t = s["tried"][api]
        lines.append(f"| {api} | {sum(counts.values())} | {t['bad']} | {t['valid']} | {t['either']} | "
                     + " | ".join(str(counts.get(k, 0)) for k in shown) + " |")
    totals, tried = Counter(), Counter()
    for api, counts in s["per_api"].items():
        totals.update(counts)
        tried.update(s["tried"][api])
    lines.append(f"| **all** | {sum(totals.values())} | {tried['bad']} | {tried['valid']} | {tried['either']} | "
                 + " | ".join(str(totals.get(k, 0)) for k in shown) + " |")
    lines += ["", "By expectation: " + "; ".join(
        f"expected {e}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())) for e, c in s["by_expectation"].items()
        if c), ""]
    lines += ["## Cases that did not end as expected", ""]
    still_open = [c for c in result["cases"] if c["id"] in set(s["open"])]
    if not still_open:
        lines.append("None.")
    else:
        lines += ["| case | expected | outcome | detail |", "|---|---|---|---|"]
        for o in still_open:
            detail = o["detail"].replace("|", "\\|").replace("\n", " ")[:220]
            lines.append(f"| `{o['id']}` | {o['expect']} | {o['outcome']} | {detail} |")
    return "\n".join(lines) + "\n"


def _json(result: Dict[str, Any]) -> str:
    """The result as JSON, one line per case (the file stays readable and small)."""
    head = json.dumps({k: v for k, v in result.items() if k != "cases"}, indent=1)
    cases = ",\n".join(json.dumps(c) for c in result["cases"])
    return head[:-2] + ',\n "cases": [\n' + cases + "\n ]\n}\n"


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.battery", description=__doc__.split("\n\n")[0])
    parser.add_argument("--api", default="", help="comma list of API name prefixes (default: all)")
    parser.add_argument("--no-cli", action="store_true", help="skip the command-line cases")
    parser.add_argument("--out", default="benchmarks/results", help="output folder")
    parser.add_argument("--name", default="battery", help="stem of the result files")
    parser.add_argument("--quiet", action="store_true", help="no per-case progress lines")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    command = "python -m benchmarks.battery " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None
                                                                                    else argv))
    start = time.perf_counter()
    outcomes = run_battery([a for a in args.api.split(",") if a], cli=not args.no_cli, progress=not args.quiet)
    result = {"command": command.strip(), "total_seconds": time.perf_counter() - start,
              "machine": {"torch": torch.__version__, "python": platform.python_version()},
              "summary": summary(outcomes), "cases": [o.as_dict() for o in outcomes]}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, f"{args.name}.json").write_text(_json(result))
    Path(args.out, f"{args.name}.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return result


if __name__ == "__main__":
    main()
