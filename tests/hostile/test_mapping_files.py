"""Mapping files an admin (or an attacker with write access to them) got wrong: every problem is a
`file:line:col` line from `check`, nothing passes `check` that crashes or exhausts a later command, files are
bounded in size, aliases and nesting, and paths stay inside the mappings folder. `discover` writes portal
text into YAML as data."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from crmbridge.sandbox.proxy import rows_of

from .conftest import MAPPINGS, World

pytestmark = [pytest.mark.hostile("mapping-files")]

POSITIONED = re.compile(r"^[^\n]+\.ya?ml:\d+:\d+: ")


def edited(folder: Path, name: str, old: str, new: str) -> Path:
    path = folder / name
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def limited_run(args: list[str], cwd: Path, env: dict[str, str], *, timeout: float = 60,
                memory_mb: int = 1500) -> subprocess.CompletedProcess[str] | None:
    """`crmbridge <args>` in its own process, bounded in memory and time; None when it ran out of time."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 1024 * 1024, memory_mb * 1024 * 1024))

    environment = {k: v for k, v in os.environ.items() if not k.startswith("CRMBRIDGE_")}
    environment.update(env)
    try:
        return subprocess.run([sys.executable, "-m", "crmbridge", *args], cwd=cwd, env=environment,
                              capture_output=True, text=True, timeout=timeout, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return None


def assert_positioned_problems(result: Any) -> list[str]:
    lines = [line for line in result.stderr.splitlines() if line.strip()] if hasattr(result, "stderr") \
        else [line for line in result.err.splitlines() if line.strip()]
    code = result.returncode if hasattr(result, "returncode") else result.code
    text = "\n".join(lines)
    assert code == 2, text
    assert "Traceback" not in text, text
    assert lines and all(POSITIONED.match(line) for line in lines), text
    return lines


def test_an_unknown_binding_timezone_is_a_check_problem(cli: Any, mappings_copy: Path) -> None:
    edited(mappings_copy, "bitrix24.yaml", "timezone: Europe/Moscow", "timezone: Mars/Olympus")
    result = cli("check", env={"CRMBRIDGE_MAPPINGS_DIR": str(mappings_copy)})
    lines = assert_positioned_problems(result)
    assert "Mars/Olympus" in lines[0]


@pytest.mark.integration
def test_an_unknown_binding_timezone_never_crashes_audit(make_world: Callable[..., World], mappings_copy: Path) -> None:
    world = make_world(deals=20)
    assert world.sync().code == 0
    edited(mappings_copy, "bitrix24.yaml", "timezone: Europe/Moscow", "timezone: Mars/Olympus")
    result = world.run("audit", CRMBRIDGE_MAPPINGS_DIR=str(mappings_copy))
    assert_positioned_problems(result)


@pytest.mark.parametrize("placeholder", ["{title:>1500000000}", "{title!r:^99999999}", "{title.__class__}",
                                         "{title[0]}", "{0}", "{}"])
def test_a_message_template_with_more_than_a_name_is_a_check_problem(cli: Any, mappings_copy: Path,
                                                                       placeholder: str) -> None:
    edited(mappings_copy, "regulation.yaml", "R2: в сделке «{title}»", f"R2: в сделке «{placeholder}»")
    result = cli("check", env={"CRMBRIDGE_MAPPINGS_DIR": str(mappings_copy)})
    lines = assert_positioned_problems(result)
    assert any("R2" in line for line in lines), lines


@pytest.mark.integration
@pytest.mark.slow
def test_a_huge_format_width_never_exhausts_memory(make_world: Callable[..., World], mappings_copy: Path) -> None:
    world = make_world(deals=40, seed=11)
    assert world.sync().code == 0
    edited(mappings_copy, "regulation.yaml", "R2: в сделке «{title}»", "R2: в сделке «{title:>1500000000}»")
    result = limited_run(["audit", "--json"], world.folder,
                         {**world.env, "CRMBRIDGE_MAPPINGS_DIR": str(mappings_copy)}, memory_mb=1200)
    assert result is not None, "audit ran out of time"
    assert_positioned_problems(result)


@pytest.mark.parametrize("duration", ["99999999999999999999d", "9999999999w", "99999999999999999999999m"])
def test_a_huge_duration_is_a_check_problem(cli: Any, mappings_copy: Path, duration: str) -> None:
    path = edited(mappings_copy, "regulation.yaml", "stale_after: 45d", f"stale_after: {duration}")
    line_number = next(number for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                       if f"stale_after: {duration}" in line)
    result = cli("check", env={"CRMBRIDGE_MAPPINGS_DIR": str(mappings_copy)})
    lines = assert_positioned_problems(result)
    assert any(f"regulation.yaml:{line_number}:" in line and "too long" in line for line in lines), lines


BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
version: 1
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", ["regulation.yaml", "bitrix24.yaml"])
def test_a_billion_laughs_file_is_refused_quickly(tmp_path: Path, mappings_copy: Path, name: str) -> None:
    (mappings_copy / name).write_text(BILLION_LAUGHS, encoding="utf-8")
    result = limited_run(["check"], tmp_path, {"CRMBRIDGE_MAPPINGS_DIR": str(mappings_copy)}, timeout=30,
                         memory_mb=1000)
    assert result is not None, "check ran out of time"
    lines = assert_positioned_problems(result)
    assert any("alias" in line for line in lines), lines


@pytest.mark.slow
@pytest.mark.parametrize("name", ["regulation.yaml", "bitrix24.yaml"])
def test_a_30_mb_file_is_refused_quickly(tmp_path: Path, mappings_copy: Path, name: str) -> None:
    path = mappings_copy / name
    filler = "# " + "x" * 98 + "\n"
    path.write_text(path.read_text(encoding="utf-8") + "pad:\n" + "".join(
        f"  k{index}: {'v' * 90}\n" for index in range(300_000)) + filler, encoding="utf-8")
    assert path.stat().st_size > 30_000_000
    result = limited_run(["check"], tmp_path, {"CRMBRIDGE_MAPPINGS_DIR": str(mappings_copy)}, timeout=30)
    assert result is not None, "check ran out of time"
    lines = assert_positioned_problems(result)
    assert any("MB" in line or "large" in line for line in lines), lines


def test_deep_nesting_is_a_problem(cli: Any, mappings_copy: Path) -> None:
    (mappings_copy / "regulation.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    result = cli("check", env={"CRMBRIDGE_MAPPINGS_DIR": str(mappings_copy)})
    assert_positioned_problems(result)


@pytest.mark.parametrize("target", ["../secret.yaml", "{outside}/secret.yaml", "/etc/passwd", "link.yaml"])
def test_the_regulation_key_stays_inside_the_mappings_folder(cli: Any, tmp_path: Path, mappings_copy: Path,
                                                             target: str) -> None:
    secret = tmp_path / "secret.yaml"
    secret.write_text("root: x:0:0:the-secret-line\n", encoding="utf-8")
    os.symlink(secret, mappings_copy / "link.yaml")
    edited(mappings_copy, "bitrix24.yaml", "regulation: regulation.yaml",
           f"regulation: {target.format(outside=tmp_path)}")
    result = cli("check", env={"CRMBRIDGE_MAPPINGS_DIR": str(mappings_copy)})
    lines = assert_positioned_problems(result)
    text = "\n".join(lines)
    assert "the-secret-line" not in text and "root:" not in text, text
    assert lines[0].startswith(str(mappings_copy / "bitrix24.yaml")), text
    assert "regulation" in lines[0], text


HOSTILE_NAMES = [
    "Продажи\x1b[2J\x1b]0;pwned\x07",  # ESC sequences make a draft unparseable
    "line one\rinjected: key",  # CR injects a line
    "line one\u2028heads: []",  # U+2028 is a line break to YAML 1.1
    'say "hi" \\ there',  # quotes and backslashes break a quoted value
    "a: b # not a comment",
    "\ufeffbom and \x85 next line",
    "tab\there and \x00 nul",
]


@pytest.mark.integration
def test_discover_writes_portal_text_as_data(make_world: Callable[..., World]) -> None:
    world = make_world(deals=10)
    names = iter(HOSTILE_NAMES * 3)
    world.proxy.add(rows_of("crm.category.list", lambda row: {**row, "name": next(names)}))
    world.proxy.add(rows_of("crm.status.list", lambda row: {**row, "NAME": row["NAME"] + " " + HOSTILE_NAMES[1]}))
    world.proxy.add(rows_of("user.get", lambda row: {**row, "NAME": HOSTILE_NAMES[2], "LAST_NAME": HOSTILE_NAMES[0]}))
    world.proxy.add(rows_of("crm.deal.userfield.list",
                            lambda row: {**row, "EDIT_FORM_LABEL": {"ru": HOSTILE_NAMES[3] + HOSTILE_NAMES[4]}}))
    draft = world.folder / "draft.yaml"
    result = world.run("discover", "--out", str(draft))
    assert result.code == 0, result.err
    data = YAML(typ="safe").load(draft.read_text(encoding="utf-8"))
    assert set(data) == {"crm", "regulation", "pipelines", "fields", "teams", "heads"}, set(data)
    written = [pipeline["name"] for pipeline in data["pipelines"].values()]
    assert written == HOSTILE_NAMES[:len(written)]
    for pipeline in data["pipelines"].values():
        assert set(pipeline) == {"name", "direction", "stages"}
    check = world.run("check", CRMBRIDGE_MAPPINGS_DIR=str(MAPPINGS))
    assert not check.crashed


def test_every_file_problem_names_its_place(cli: Any, mappings_copy: Path) -> None:
    (mappings_copy / "bitrix24.yaml").write_bytes(b"crm: bitrix24\npipelines:\n  0: \xff\xfe\n")
    result = cli("check", env={"CRMBRIDGE_MAPPINGS_DIR": str(mappings_copy)})
    assert_positioned_problems(result)
