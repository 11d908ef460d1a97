"""Mapping files read by ruamel's C parser give the same data, positions and problems as the pure parser."""

from __future__ import annotations

from pathlib import Path

import pytest
from ruamel.yaml import YAML
from ruamel.yaml.main import CParser

from crmbridge.mapping import yamlpos
from crmbridge.mapping.yamlpos import LocatedDocument, read_yaml

ROOT = Path(__file__).resolve().parents[2]
CASES = {
    "scalars": "a: yes\nb: no\nc: on\nd: true\ne: ~\nf: null\ng: 0o17\nh: 0x1F\ni: 1_000\nj: .inf\nk: -.inf\nl: .nan\n"
               "m: 1e3\nn: 2026-11-30\no: 2026-11-30T10:00:00+03:00\np: '012'\nq: 012\nr: 1.5\ns: !custom x\n",
    "anchors and merges": "base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\nlist: [*b, *b]\n",
    "duplicate keys": "a: 1\na: 2\nb:\n  c: 1\n  c: 3\n",
    "cyrillic and blocks": "имя: Менеджер\n  # comment\nключ:   \"значение с [скобками]\"\nfolded: >\n  line one\n"
                           "  line two\nliteral: |\n  a\n  b\n",
    "flow plans": "plans:\n  - {manager: 2, metric: revenue, targets: {2026-01: 1, 2026-02: 2}}\n  - [1, 2, {a: b}]\n",
    "complex key": "? [a, b]\n: value\n",
    "empty": "",
    "comment only": "# nothing\n",
    "tab": "a:\n\t- 1\n",
    "unclosed": "a: [1, 2\nb: c\n",
    "two documents": "a: 1\n---\nb: 2\n",
}
FILES = {str(path.relative_to(ROOT)): path.read_text(encoding="utf-8")
         for pattern in ("mappings/*.yaml", "jobs/*.yaml", "src/crmbridge/defaults/*.yaml")
         for path in sorted(ROOT.glob(pattern))}


def _pure(text: str, file: str) -> LocatedDocument:
    """read_yaml as it was before the C parser: the round-trip parser only."""
    original = yamlpos._compose
    yamlpos._compose = lambda text: YAML(typ="rt").compose(text)  # type: ignore[assignment]
    try:
        return read_yaml(text, file)
    finally:
        yamlpos._compose = original


@pytest.mark.skipif(CParser is None, reason="ruamel.yaml.clib is not installed")
@pytest.mark.parametrize("name", [*CASES, *FILES])
def test_the_c_parser_reads_like_the_pure_one(name: str) -> None:
    text = CASES.get(name, FILES.get(name, ""))
    fast, pure = read_yaml(text, name), _pure(text, name)
    assert repr(fast.data) == repr(pure.data)
    assert fast.keys == pure.keys and fast.values == pure.values
    assert [str(problem) for problem in fast.problems] == [str(problem) for problem in pure.problems]


def test_a_folded_scalar_is_text_without_fold_marks() -> None:
    doc = read_yaml("text: >\n  one\n  two\n", "f.yaml")
    assert doc.data == {"text": "one two\n"}
    assert _pure("text: >\n  one\n  two\n", "f.yaml").data == {"text": "one two\n"}
