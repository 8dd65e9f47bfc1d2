"""Reports of `wdist check`: rich summary, JSON (wdist/check/1), JUnit XML, GitHub annotations/summary."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import click

from wdist.analyzers.check import OPS, CheckpointResult
from wdist.analyzers.report import CheckReport
from wdist.cli.render.common import console, echo, md_cell, num, plural, prose, safe, warn, write_json

SHOW_WORST = 5


def failing_value(v: object, op: str, target: object) -> str:
    """A failing value with enough digits that the number shown fails the rule too (4 significant digits
    unless rounding would make it pass: `max <= 1` failing at 1.0000100135803223 shows 1.00001, not 1)."""
    if not isinstance(v, float) or not isinstance(target, (int, float)) or op not in OPS:
        return num(v, 4)
    for digits in range(4, 18):
        shown = num(v, digits)
        try:
            if not OPS[op](float(shown), target):
                return shown
        except ValueError:  # inf / nan print as words; they fail as themselves
            return shown
    return repr(v)


def render(report: CheckReport, fmt: str) -> None:
    results, config = report.checkpoints, report.config
    if fmt == "json":
        write_json(report)
        return
    con = console()
    echo(con, f"config: {safe(config)}" if config else "config: none (rules from --rule)", "dim")
    marks = {"pass": ("PASS", "green"), "fail": ("FAIL", "bold red"), "error": ("ERROR", "bold red")}
    for r in results:
        if r.error:
            prose(con, f"ERROR {r.path}: {r.error}", style="bold red")
            continue
        echo(con, safe(r.path), "bold")
        warn(con, r.warnings, indent="  ")
        for rr in r.rules:
            mark, style = marks[rr.verdict]
            extra = (f"{rr.matched} matched" if rr.verdict == "pass" else
                     f"{len(rr.failures)} of {rr.matched} fail" if rr.verdict == "fail" else rr.message)
            from rich.text import Text

            echo(con, Text.assemble("  ", (mark, style), f" {safe(rr.rule)}  ({safe(extra)})"))
            for o in rr.failures[:SHOW_WORST]:
                echo(con, f"        {safe(o.name)}: {safe(rr.metric)} = {failing_value(o.value, rr.op, rr.value)}")
            if len(rr.failures) > SHOW_WORST:
                echo(con, f"        ... {len(rr.failures) - SHOW_WORST} more (all of them in --format json and --junit)")
    n_fail = sum(1 for r in results for rr in r.rules if rr.verdict != "pass") + sum(1 for r in results if r.error)
    echo(con, "all rules pass" if report.exit_code == 0 else plural(n_fail, "problem"),
         "green" if report.exit_code == 0 else "red")


def write_junit(results: list[CheckpointResult], path: str) -> None:
    """JUnit XML. Names from files are escaped (safe): XML 1.0 cannot hold control characters at all."""
    x = safe
    suites = ET.Element("testsuites", name="wdist check")
    for r in results:
        cases: list[ET.Element] = []
        cls = x(f"wdist.check.{r.path}")  # the whole path: run1/model.pt and run2/model.pt are two classes
        if r.error:
            c = ET.Element("testcase", classname="wdist.check", name=x(f"read {r.path}"))
            ET.SubElement(c, "error", message=x(r.error)).text = x(r.error)
            cases.append(c)
        for rr in r.rules:
            c = ET.Element("testcase", classname=cls, name=x(rr.rule))
            if rr.verdict == "fail":
                msg = f"{len(rr.failures)} of {rr.matched} tensors fail"
                ET.SubElement(c, "failure", message=msg).text = "\n".join(
                    x(f"{o.name}: {rr.metric} = {o.value}") for o in rr.failures)
            elif rr.verdict == "error":
                ET.SubElement(c, "error", message=x(rr.message)).text = x(rr.message)
            cases.append(c)
            for o in rr.failures:
                t = ET.Element("testcase", classname=cls, name=x(f"{rr.rule} :: {o.name}"))
                ET.SubElement(t, "failure", message=x(f"{rr.metric} = {o.value}, wanted {rr.op} {rr.value}"))
                cases.append(t)
        suite = ET.SubElement(suites, "testsuite", name=x(r.path), tests=str(len(cases)),
                              failures=str(sum(1 for c in cases if c.find("failure") is not None)),
                              errors=str(sum(1 for c in cases if c.find("error") is not None)))
        suite.extend(cases)
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)


def write_junit_error(path: str | None, reason: str, out: str) -> None:
    """JUnit XML of a check that could not run at all: one test case in error, saying why."""
    suites = ET.Element("testsuites", name="wdist check")
    suite = ET.SubElement(suites, "testsuite", name="wdist check", tests="1", failures="0", errors="1")
    c = ET.SubElement(suite, "testcase", classname="wdist.check", name=safe(f"read {path}" if path else "check"))
    msg = safe(f"{path}: {reason}" if path else reason)
    ET.SubElement(c, "error", message=msg).text = msg
    ET.ElementTree(suites).write(out, encoding="utf-8", xml_declaration=True)


def _gh_escape(s: str) -> str:
    return safe(s).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_prop(s: str) -> str:
    return _gh_escape(s).replace(":", "%3A").replace(",", "%2C")


def github(results: list[CheckpointResult], err: bool = False) -> None:
    """::error workflow commands, on stdout (stderr with `err`): the worst SHOW_WORST failures of each rule
    and, when there are more, one annotation that says how many more."""
    def out(line: str) -> None:
        click.echo(line, err=err)

    for r in results:
        if r.error:
            out(f"::error file={_gh_prop(r.path)},title=wdist check::{_gh_escape(r.error)}")
        for rr in r.rules:
            if rr.verdict == "error":
                out(f"::error file={_gh_prop(r.path)},title=wdist check::{_gh_escape(rr.rule + ': ' + rr.message)}")
            title = _gh_prop('wdist ' + rr.rule)
            for o in rr.failures[:SHOW_WORST]:
                out(f"::error file={_gh_prop(r.path)},title={title}::"
                    + _gh_escape(f"{o.name}: {rr.metric} = {o.value} (wanted {rr.op} {rr.value})"))
            if len(rr.failures) > SHOW_WORST:
                out(f"::error file={_gh_prop(r.path)},title={title}::"
                    + _gh_escape(f"... {len(rr.failures) - SHOW_WORST} more of {len(rr.failures)} failing "
                                 "(all of them in --format json and --junit)"))


def step_summary(results: list[CheckpointResult], summary: str) -> None:
    """A markdown table appended to the file $GITHUB_STEP_SUMMARY names."""
    if summary:
        lines = ["## wdist check", "", "| checkpoint | rule | verdict | failing |", "|---|---|---|---:|"]
        for r in results:
            if r.error:
                lines.append(f"| {md_cell(r.path)} | (read) | error: {md_cell(r.error)} | |")
            for rr in r.rules:
                lines.append(f"| {md_cell(r.path)} | {md_cell(rr.rule)} | {rr.verdict} | {len(rr.failures)} |")
        with open(summary, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
