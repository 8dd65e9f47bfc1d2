"""Reports of `wdist check`: rich summary, JSON (wdist/check/1), JUnit XML, GitHub annotations/summary."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Any

import click

from wdist.analyzers.check import CheckpointResult
from wdist.cli.render.common import console, dumps, jsonable, num

SCHEMA = "wdist/check/1"
SHOW_WORST = 5


def exit_code(results: list[CheckpointResult]) -> int:
    if any(r.error or any(rr.verdict == "error" for rr in r.rules) for r in results):
        return 2
    return 0 if all(r.passed for r in results) else 1


def as_dict(results: list[CheckpointResult]) -> dict[str, Any]:
    return {"schema": SCHEMA, "passed": exit_code(results) == 0, "exit_code": exit_code(results),
            "checkpoints": [{"path": r.path, "error": r.error, "passed": r.passed,
                             "rules": [jsonable(rr) for rr in r.rules]} for r in results]}


def render(results: list[CheckpointResult], fmt: str) -> None:
    if fmt == "json":
        click.echo(dumps(as_dict(results)))
        return
    con = console()
    for r in results:
        if r.error:
            con.print(f"[bold red]ERROR[/] {r.path}: {r.error}", highlight=False)
            continue
        con.print(f"[bold]{r.path}[/]", highlight=False)
        for rr in r.rules:
            mark = {"pass": "[green]PASS[/]", "fail": "[bold red]FAIL[/]", "error": "[bold red]ERROR[/]"}[rr.verdict]
            extra = (f"{rr.matched} matched" if rr.verdict == "pass" else
                     f"{len(rr.failures)} of {rr.matched} fail" if rr.verdict == "fail" else rr.message)
            con.print(f"  {mark} {rr.rule}  ({extra})", highlight=False)
            for o in rr.failures[:SHOW_WORST]:
                con.print(f"        {o.name}: {rr.metric} = {num(o.value, 4)}", highlight=False)
            if len(rr.failures) > SHOW_WORST:
                con.print(f"        ... {len(rr.failures) - SHOW_WORST} more", highlight=False)
    n_fail = sum(1 for r in results for rr in r.rules if rr.verdict != "pass") + sum(1 for r in results if r.error)
    con.print("[green]all rules pass[/]" if exit_code(results) == 0 else f"[red]{n_fail} problem(s)[/]")


def write_junit(results: list[CheckpointResult], path: str) -> None:
    suites = ET.Element("testsuites", name="wdist check")
    for r in results:
        cases: list[ET.Element] = []
        if r.error:
            c = ET.Element("testcase", classname="wdist.check", name=f"read {r.path}")
            ET.SubElement(c, "error", message=r.error).text = r.error
            cases.append(c)
        for rr in r.rules:
            c = ET.Element("testcase", classname=f"wdist.check.{os.path.basename(r.path)}", name=rr.rule)
            if rr.verdict == "fail":
                msg = f"{len(rr.failures)} of {rr.matched} tensors fail"
                ET.SubElement(c, "failure", message=msg).text = "\n".join(
                    f"{o.name}: {rr.metric} = {o.value}" for o in rr.failures)
            elif rr.verdict == "error":
                ET.SubElement(c, "error", message=rr.message).text = rr.message
            cases.append(c)
            for o in rr.failures:
                t = ET.Element("testcase", classname=f"wdist.check.{os.path.basename(r.path)}", name=f"{rr.rule} :: {o.name}")
                ET.SubElement(t, "failure", message=f"{rr.metric} = {o.value}, wanted {rr.op} {rr.value}")
                cases.append(t)
        suite = ET.SubElement(suites, "testsuite", name=r.path, tests=str(len(cases)),
                              failures=str(sum(1 for c in cases if c.find("failure") is not None)),
                              errors=str(sum(1 for c in cases if c.find("error") is not None)))
        suite.extend(cases)
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)


def _gh_escape(s: str) -> str:
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_prop(s: str) -> str:
    return _gh_escape(s).replace(":", "%3A").replace(",", "%2C")


def github(results: list[CheckpointResult]) -> None:
    """::error workflow commands on stdout, and a markdown table appended to $GITHUB_STEP_SUMMARY."""
    for r in results:
        if r.error:
            click.echo(f"::error file={_gh_prop(r.path)},title=wdist check::{_gh_escape(r.error)}")
        for rr in r.rules:
            if rr.verdict == "error":
                click.echo(f"::error file={_gh_prop(r.path)},title=wdist check::{_gh_escape(rr.rule + ': ' + rr.message)}")
            for o in rr.failures[:SHOW_WORST]:
                click.echo(f"::error file={_gh_prop(r.path)},title={_gh_prop('wdist ' + rr.rule)}::"
                           + _gh_escape(f"{o.name}: {rr.metric} = {o.value} (wanted {rr.op} {rr.value})"))
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        lines = ["## wdist check", "", "| checkpoint | rule | verdict | failing |", "|---|---|---|---:|"]
        for r in results:
            if r.error:
                lines.append(f"| {r.path} | (read) | error: {r.error} | |")
            for rr in r.rules:
                lines.append(f"| {r.path} | `{rr.rule}` | {rr.verdict} | {len(rr.failures)} |")
        with open(summary, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
