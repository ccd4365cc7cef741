import argparse

import pytest

from flows.config_flags import add_config_flags, config_from_flags

FLAGS = {"steps": ("--steps", int, "how many"), "name": ("--name", str, "what")}


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_flags(parser, FLAGS, "Thing")
    return parser.parse_args(argv)


def test_flags_given_override_the_json_and_flags_not_given_leave_it():
    assert config_from_flags(parse("--config", '{"steps": 3, "name": "a"}', "--steps", "5"), FLAGS, "Thing") == {
        "steps": 5,
        "name": "a",
    }
    assert config_from_flags(parse(), FLAGS, "Thing") == {}


@pytest.mark.parametrize("text, message", [("[1]", "JSON object of Thing fields"), ("{oops", "Expecting")])
def test_a_config_that_is_not_a_json_object_is_a_value_error_saying_so(text, message):
    with pytest.raises(ValueError, match=message):
        config_from_flags(parse("--config", text), FLAGS, "Thing")
