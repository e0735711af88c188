"""Journey files: every shipped example is valid, and every kind of mistake is reported
with the file, the line and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from touchline.cli import main
from touchline.decisions.journeys import (
    BranchStep, HandoffStep, JourneyError, SendStep, SuppressStep, WaitForStep, WaitUntilStep, parse_journey,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "journeys"
HEAD = "journey: t\nentry: {event: signup}\n"


def _problem(text: str) -> str:
    with pytest.raises(JourneyError) as err:
        parse_journey(text, "t.yaml")
    return str(err.value)


def test_the_shipped_journeys_are_valid_and_cover_the_common_programmes(capsys):
    assert main(["journeys", "check", str(EXAMPLES)]) == 0
    out = capsys.readouterr().out
    names = {"welcome", "abandoned_cart", "onboarding", "lead_nurturing", "winback", "sunset", "birthday",
             "replenishment"}
    assert {line.split("'")[1] for line in out.splitlines()} == names
    journeys = {p.stem: parse_journey(p.read_text(), str(p)) for p in EXAMPLES.glob("*.yaml")}
    kinds = {type(s) for j in journeys.values() for s in j.steps}
    assert {SendStep, WaitForStep, WaitUntilStep, BranchStep, HandoffStep, SuppressStep} <= kinds
    welcome = [s for s in journeys["welcome"].steps if isinstance(s, SendStep)]
    assert [s.send.template for s in welcome] == ["welcome/1", "welcome/benefits", "welcome/first-purchase"]
    cart = journeys["abandoned_cart"]
    assert cart.steps[0].wait_ms == 30 * 60_000 and cart.exit.goal == ["purchase"]


@pytest.mark.parametrize("body, expected", [
    ("steps:\n  - send: {channel: emial, template: x}\n", "t.yaml:4: steps[0].send.channel: unknown channel 'emial'"),
    ("steps:\n  - wiat: 3d\n", "t.yaml:4: steps[0]: a step needs exactly one of"),
    ("steps:\n  - wait: 3d\n    send: {channel: email, template: x}\n", "got keys: wait, send"),
    ("steps:\n  - wait: 3 parsecs\n", "t.yaml:4: steps[0].wait: bad duration '3 parsecs'"),
    ("stpes:\n  - wait: 1d\n", "t.yaml:3: stpes: unknown key (did you mean 'steps'?)"),
    ("priority: 5000\nsteps:\n  - wait: 1d\n", "t.yaml:3: priority: Input should be less than or equal to 1000"),
    ("steps:\n  - wait_until: {time: '25:00'}\n", "t.yaml:4: steps[0].wait_until.time: bad time of day '25:00'"),
    ("steps:\n  - wait_for: {event: email_opne, timeout: 1d}\n",
     "t.yaml:4: steps[0].wait_for.event: unknown event type 'email_opne' (did you mean 'email_open'?"),
    ("steps:\n  - branch:\n      - profile: {favourite_colour: blue}\n        goto: step-1\n    else: step-1\n",
     "t.yaml:5: steps[0].branch[0]: unknown profile field(s) ['favourite_colour']"),
    ("steps:\n  - branch:\n      - percent: 60\n        goto: step-2\n      - percent: 60\n        goto: step-2\n"
     "    else: step-2\n  - wait: 1d\n", "percents add up to 120"),
    ("steps:\n  - hand_to_sales: {assign: round_robin}\n", "round_robin needs reps"),
    ("steps: []\n", "t.yaml:3: steps: List should have at least 1 item"),
])
def test_mistakes_name_the_line_and_the_field(body, expected):
    assert expected in _problem(HEAD + body)


def test_flow_mistakes_are_caught_after_the_fields():
    assert "t.yaml:5: steps[0].next: no step with id 'nowhere'" in _problem(
        HEAD + "steps:\n  - wait: 1d\n    next: nowhere\n")
    assert "duplicate step id 'a'" in _problem(HEAD + "steps:\n  - id: a\n    wait: 1d\n  - id: a\n    wait: 1d\n")
    loop = _problem(HEAD + "steps:\n  - id: a\n    send: {channel: email, template: x}\n"
                           "  - id: b\n    branch:\n      - percent: 50\n        goto: a\n    else: a\n")
    assert "steps a -> b -> a loop without a wait" in loop
    # a loop through a wait is fine (lead nurturing does this)
    parse_journey(HEAD + "steps:\n  - id: a\n    send: {channel: email, template: x}\n  - wait: 1d\n    next: a\n")


@pytest.mark.parametrize("text, expected", [
    ("journey: [unclosed\n", "t.yaml:1:10: invalid YAML: the '[' here is not closed"),
    ("- just\n- a list\n", "t.yaml:1: a journey file is a mapping"),
    ("journey: t\njourney: u\nentry: {event: signup}\nsteps: [{wait: 1d}]\n", "t.yaml:2:1: invalid YAML: key 'journey' appears twice in one mapping (first at line 1)"),
    ("journey: t\nentry: {event: signup, score: {model: lead, crosses: 0.5}}\nsteps: [{wait: 1d}]\n",
     "entry needs exactly one of: event, score, segment, date"),
    ("journey: Bad Name\nentry: {event: signup}\nsteps: [{wait: 1d}]\n", "t.yaml:1: journey: String should match pattern"),
    ("", "a journey file is a mapping"),
])
def test_file_level_mistakes(text, expected):
    assert expected in _problem(text)


def test_check_command_reports_every_file_and_exits_2(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(HEAD + "steps:\n  - wait: 1d\n")
    twin = tmp_path / "twin.yml"
    twin.write_text(HEAD + "steps:\n  - wait: 2d\n")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    assert main(["journeys", "check", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert f"ok  {good}" in captured.out
    assert f"{binary}: not UTF-8 text" in captured.err
    assert f"journey name 't' is already used by {good}" in captured.err
    assert main(["journeys", "check", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    settings = tmp_path / "journeys.toml"
    settings.write_text("[journeys]\nfiles = ['good.yaml']\n")
    assert main(["journeys", "check", str(settings)]) == 2  # a settings file where a journey file goes
    assert "a TOML file is a settings file, not a journey file" in capsys.readouterr().err


def test_preview_shows_what_a_contact_would_get_and_when(capsys):
    events = EXAMPLES.parent / "cart-contact.jsonl"
    config = EXAMPLES.parent / "journeys.toml"
    assert main(["journeys", "preview", str(EXAMPLES / "abandoned_cart.yaml"), "--contact-events", str(events),
                 "--config", str(config), "--days", "5"]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing sent" in out
    sends = [line for line in out.splitlines() if "SEND" in line]
    assert len(sends) == 2
    assert "2026-01-06T20:12:00Z" in sends[0] and "email cart/reminder" in sends[0]  # 30 min after the cart
    assert "push cart/offer-push offer cart-10" in sends[1] and "2026-01-08T07" in sends[1]  # after quiet hours
    assert "no email_open before the timeout" in out and "exited: completed" in out
    assert "deferred 1h (x" in out  # hourly deferrals folded into one line


def test_preview_json_and_hostile_event_files(tmp_path, capsys):
    events = tmp_path / "events.jsonl"
    events.write_bytes(b'\xff\xfe garbage\n{"event_id": "e1", "type": "signup", "ts": 1767614400000, '
                       b'"contact_id": "c1"}\n')
    assert main(["journeys", "preview", str(EXAMPLES / "welcome.yaml"), "--contact-events", str(events),
                 "--config", str(EXAMPLES.parent / "journeys.toml"), "--json", "--days", "6"]) == 0
    import orjson

    result = orjson.loads(capsys.readouterr().out)
    assert [d["source"] for d in result["dead_letters"]] == ["events.jsonl:1"]
    assert [e["step"] for e in result["timeline"] if e["what"].startswith("SEND")] == [
        "welcome", "benefits", "first_purchase_offer"]
    assert main(["journeys", "preview", str(EXAMPLES / "welcome.yaml"), "--contact-events", str(tmp_path)]) == 2
    assert "not a readable file" in capsys.readouterr().err


# ------------------------------------------------------------------ issue 22: YAML syntax, did you mean, durations
@pytest.mark.parametrize("text, expected", [
    # a key indented one space less than its neighbours (PyYAML: expected <block end>, but found ...)
    ("journey: t\nentry:\n  event: signup\n steps:\n  - wait: 1d\n",
     "t.yaml:4:2: invalid YAML: this key is indented differently from the keys before it (the mapping that "
     "starts at line 1, column 1)"),
    # the issue's own case: PyYAML says "expected <block end>, but found '?'" (a step's key at the list's column)
    ("journey: t\nentry: {event: signup}\nsteps:\n  - wait: 1d\n  next: x\n",
     "t.yaml:5:3: invalid YAML: a key where a list item ('- ...') was expected (the list that starts at line 4, "
     "column 3): indent it under its item to belong to it, or start a new item with '- '"),
    ("journey: t\nentry: {event: signup}\nsteps:\n  - wait: 1d\n - wait: 2d\n",
     "t.yaml:5:2: invalid YAML: a list item ('- ...') where a key was expected"),
    ("journey: t\nentry: {event: signup}\nsteps:\n\t- wait: 1d\n",
     "t.yaml:4:1: invalid YAML: a tab character; YAML indents with spaces only"),
    ("journey: t\nentry: {event: signup\nsteps:\n  - wait: 2d\n",
     "t.yaml:2:8: invalid YAML: the '{' here is not closed: a '}' (or a ',' between entries) is missing"),
    ("journey: 't\nentry: {event: signup}\n", "t.yaml:1:10: invalid YAML: this quote is never closed"),
    ("journey: t\nentry\nsteps: []\n", "t.yaml:2:1: invalid YAML: this line is neither 'key: value' nor a list item"),
    ("journey: t\ndescription: note: this\n", "t.yaml:2:18: invalid YAML: a ':' cannot start a value here: quote"),
    ("journey: t\n---\njourney: u\n", "t.yaml:2:1: invalid YAML: a second document ('---')"),
    ("journey: !!python/object:os.system x\n", "the tag '!!python/object:os.system' is not allowed"),
])
def test_yaml_syntax_errors_give_file_line_column_and_what_is_wrong(text, expected):
    problem = _problem(text)
    assert expected in problem
    assert "expected <block end>" not in problem and "but found" not in problem and "\n" not in problem


@pytest.mark.parametrize("body, expected", [
    ("steps:\n  - send: {chanel: email, template: x}\n",
     "t.yaml:4: steps[0].send.chanel: unknown key (did you mean 'channel'?)"),
    ("steps:\n  - send: {channel: emial, template: x}\n",
     "unknown channel 'emial' (did you mean 'email'?); known: email, sms, push, sales_task"),
    ("steps:\n  - suppress: {channels: [emial]}\n", "unknown channel(s) ['emial'] (did you mean 'email'?)"),
    ("steps:\n  - wiat: 3d\n", "(got keys: wiat; did you mean 'wait'?)"),
    ("steps:\n  - wait_for: {event: email_open, timeot: 1d}\n",
     "t.yaml:4: steps[0].wait_for.timeot: unknown key (did you mean 'timeout'?)"),
    ("exit: {goals: [purchase]}\nsteps:\n  - wait: 1d\n", "t.yaml:3: exit.goals: unknown key (did you mean 'goal'?)"),
    ("steps:\n  - branch:\n      - profile: {purchases_totl: 1}\n        goto: step-1\n    else: step-1\n",
     "unknown profile field(s) ['purchases_totl'] (did you mean 'purchases_total'?)"),
    ("steps:\n  - branch:\n      - profile: {purchases_total: {gtee: 1}}\n        goto: step-1\n    else: step-1\n",
     "unknown operator(s) ['gtee'] (did you mean 'gte'?)"),
    ("steps:\n  - wait: 1d\n    xyzzy: 1\n", "t.yaml:5: steps[0].xyzzy: unknown key; allowed here: id, next, wait"),
    ("steps:\n  - wait_for: {event: email_click, where: {link: {contans: x}}, timeout: 1d}\n",
     "unknown operator(s) ['contans'] (did you mean 'contains'?)"),
])
def test_near_misses_get_a_did_you_mean_that_is_valid_there(body, expected):
    assert expected in _problem(HEAD + body)


def test_the_key_meant_is_not_also_reported_missing_and_problems_come_in_file_order():
    problem = _problem("journey: t\nentry: {event: signup, wher: {}}\nstpes:\n  - wait: 1d\n")
    assert problem.splitlines() == ["t.yaml:2: entry.wher: unknown key (did you mean 'where'?)",
                                    "t.yaml:3: stpes: unknown key (did you mean 'steps'?)"]
    # with no near miss, the required key is named
    assert _problem("journey: t\nentry: {event: signup}\n") == "t.yaml:1: steps: missing (required)"


@pytest.mark.parametrize("body, where", [
    ("steps:\n  - wait: 5\n", "t.yaml:4: steps[0].wait"),
    ("steps:\n  - wait: 2.5\n", "t.yaml:4: steps[0].wait"),
    ("steps:\n  - wait_for: {event: email_open, timeout: 3600}\n", "t.yaml:4: steps[0].wait_for.timeout"),
    ("re_entry: {allowed: true, after: 0}\nsteps:\n  - wait: 1d\n", "t.yaml:3: re_entry.after"),
    ("caps: {sends: 2, per: 7}\nsteps:\n  - wait: 1d\n", "t.yaml:3: caps.per"),
    ("defer_for: 60\nsteps:\n  - wait: 1d\n", "t.yaml:3: defer_for"),
])
def test_a_bare_number_is_not_a_duration_and_the_message_shows_the_forms(body, where):
    problem = _problem(HEAD + body)
    assert problem.startswith(where + ": bad duration ")
    assert "a number needs a unit" in problem and "e.g. 30m, 2h, 5d" in problem


def test_a_bare_number_message_offers_each_unit():
    assert ("t.yaml:4: steps[0].wait: bad duration 5: a number needs a unit (5s, 5m, 5h, 5d or 5w?); a duration "
            "is a number and s, m, h, d or w (e.g. 30m, 2h, 5d, 1.5h)") == _problem(HEAD + "steps:\n  - wait: 5\n")
    assert parse_journey(HEAD + "steps:\n  - wait: 5s\n").steps[0].wait_ms == 5_000  # with a unit: fine


def test_check_command_counts_problems_not_files(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(HEAD + "steps:\n  - wait: 5\n  - send: {channel: emial, template: x}\n")
    assert main(["journeys", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:4: steps[0].wait: bad duration 5" in err
    assert f"{bad}:5: steps[1].send.channel: unknown channel 'emial' (did you mean 'email'?)" in err
    assert err.rstrip().endswith("touchline: 2 problem(s) in the journey files")
