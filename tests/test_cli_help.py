"""Every subcommand's --help renders, and every boolean flag reads the right way round."""

import argparse
import dataclasses
import re

import pytest

from c2f.cli import COMMANDS, build_parser


def _help(name: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[name].format_help()


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_renders_and_negated_flags_read_as_negations(name):
    text = _help(name)
    assert text.startswith(f"usage: c2f {name}")
    for cls in COMMANDS[name].configs:
        for f in dataclasses.fields(cls):
            if f.metadata.get("positional"):
                continue
            flag = "--" + f.name.replace("_", "-")
            assert flag in text, f"{flag} missing from c2f {name} --help"
            if f.type in (bool, "bool") and f.default is True:
                # A flag that is on by default is shown as `--x, --no-x  <what x does> (default: on)`:
                # the help describes the positive flag, printed first, never the negation alone.
                assert re.search(rf"{flag}, --no-{flag[2:]}\s+\S", text), f"{flag} is not shown with its negation"
    # no stand-alone negated flag whose help would describe the opposite of what it does
    standalone = re.findall(r"^\s+(--no-[\w-]+)\s", text, flags=re.M)
    assert not standalone, f"negated flags without their positive form: {standalone}"


def test_default_on_flag_can_be_turned_off_and_on():
    parser = build_parser()
    assert parser.parse_args(["label", "in", "out"]).validate is True
    assert parser.parse_args(["label", "in", "out", "--no-validate"]).validate is False
    assert parser.parse_args(["validate", "x", "--no-progress"]).progress is False


def test_percent_in_help_is_literal():
    # argparse %-formats help strings; a "5%" in a field's help must render, not crash.
    from c2f.flags import add_flags

    @dataclasses.dataclass
    class Cfg:
        warmup: float = dataclasses.field(default=0.05, metadata={"help": "5% of the steps"})

    p = argparse.ArgumentParser()
    add_flags(p, Cfg)
    assert "5% of the steps" in p.format_help()
