import argparse

import pytest

from flows.commands import add_config_flags, config_from_flags

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


@pytest.mark.usefixtures("prefect_api")
def test_a_completed_run_gives_its_result_and_a_failed_one_says_how_it_ended(capsys):
    from prefect import flow

    from flows.commands import completed_result

    @flow(name="kp20k-test-end")
    def ends(fail: bool) -> int:
        if fail:
            raise RuntimeError("the disk is full")
        return 7

    assert completed_result(ends(False, return_state=True), "kp20k test") == 7
    assert completed_result(ends(True, return_state=True), "kp20k test") is None
    err = capsys.readouterr().err
    assert "kp20k test: the flow run ended FAILED" in err and "the disk is full" in err
