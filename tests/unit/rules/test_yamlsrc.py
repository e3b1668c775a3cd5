"""The strict YAML reader."""

from __future__ import annotations

from service.yamlsrc import YMap, YScalar, YSeq, parse_yaml


def _scalars(text: str) -> dict[str, object]:
    tree, problems = parse_yaml(text, "f.yaml")
    assert problems == [] and isinstance(tree, YMap)
    return {str(k.value): v.value for k, v in tree.items if isinstance(v, YScalar)}


def test_only_true_and_false_are_booleans() -> None:
    values = _scalars("on: yes\noff: no\ny: Y\nt: true\nf: False\n")
    assert values == {"on": "yes", "off": "no", "y": "Y", "t": True, "f": False}


def test_numbers_are_plain_decimals() -> None:
    values = _scalars("a: 010101\nb: 1:20\nc: 50_000\nd: -3\ne: 0.8\nf: 1e5\ng: 0x1F\nh: 2024-06-01\ni: ~\nj:\n")
    assert values == {
        "a": "010101",
        "b": "1:20",
        "c": 50000,
        "d": -3,
        "e": 0.8,
        "f": "1e5",
        "g": "0x1F",
        "h": "2024-06-01",
        "i": None,
        "j": None,
    }


def test_lines_of_keys_values_and_block_scalars() -> None:
    tree, _ = parse_yaml("a:\n  - x\n  - |\n    line one\n    line two\n", "f.yaml")
    assert isinstance(tree, YMap)
    key, seq = tree.items[0]
    assert key.line == 1 and isinstance(seq, YSeq) and seq.line == 2
    first, block = seq.items
    assert isinstance(first, YScalar) and first.line == 2
    assert isinstance(block, YScalar) and (block.line, block.text_line, block.style) == (3, 4, "|")


def test_problems() -> None:
    assert [str(p) for p in parse_yaml("a: [1\n", "f.yaml")[1]] == [
        "f.yaml:2: YAML syntax error: expected ',' or ']', but got '<stream end>'"
    ]
    assert [str(p) for p in parse_yaml("? [a]\n: 1\n", "f.yaml")[1]] == ["f.yaml:1: mapping keys must be plain strings"]
    assert parse_yaml("", "f.yaml") == (None, [])
    assert parse_yaml("# only a comment\n", "f.yaml") == (None, [])
