"""examples/templates/ holds an e-mail template for every e-mail the shipped journeys and the
built-in actions send, and each renders through the SMTP connector's own template loader
(sandboxed, undefined names are errors) to a subject and a body, with and without an offer."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from touchline.connectors.channels.smtp import Templates
from touchline.decisions.policy import PolicyConfig

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TEMPLATES = EXAMPLES / "templates"


def email_sends() -> dict[str, set[str | None]]:
    """template -> the offers it is sent with, for every e-mail the examples can send."""
    sends: dict[str, set[str | None]] = {}
    for path in sorted((EXAMPLES / "journeys").glob("*.yaml")):
        for step in yaml.safe_load(path.read_text())["steps"]:
            send = step.get("send") or {}
            if send.get("channel") == "email":
                sends.setdefault(send["template"], set()).add(send.get("offer"))
    for action in PolicyConfig().actions.values():
        if "email" in action.channels:
            sends.setdefault(action.template, set()).add(None)
    return sends


def decision(template: str, offer: str | None) -> dict[str, object]:
    """A decision record as the connectors receive it (the fields a template may use)."""
    return {"decision_id": "5cf8cbc86baa41124c51a2ff6e705d93", "contact_id": "c-1757", "action": "journey_step",
            "channel": "email", "template": template, "offer": offer, "journey": template.split("/")[0],
            "step": "s1", "priority": 50, "reasons": ["entered"], "scores": {}, "segment": {},
            "experiment": {"arm": "treatment", "name": "global_holdout"}}


def test_every_email_the_examples_send_has_a_template_and_none_is_orphaned():
    sends = email_sends()
    assert len(sends) >= 10
    shipped = {str(p.relative_to(TEMPLATES).with_suffix("")) for p in TEMPLATES.rglob("*.txt")}
    assert set(sends) - shipped == set(), "e-mails without a template in examples/templates"
    assert shipped - set(sends) == set(), "templates no shipped journey or action sends"


@pytest.mark.parametrize("template", sorted(email_sends()))
def test_each_template_renders_a_subject_and_a_body(template: str):
    templates = Templates(TEMPLATES)
    for offer in email_sends()[template] | {None, "TRY-15"}:
        subject, body = templates.render(decision(template, offer))
        assert subject and "{" not in subject and "\n" not in subject, (template, subject)
        assert body.strip() and "{" not in body, (template, body)
        if offer is not None and "offer" in (TEMPLATES / f"{template}.txt").read_text():
            assert offer in subject + body, f"{template}: the offer {offer} is not shown"
