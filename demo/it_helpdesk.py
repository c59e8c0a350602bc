"""The demo task ``it_helpdesk``: routing employees' IT requests at "Globex" to the team that handles them.

The assistant answers every user message with ONE line of JSON ``{"team": "<team>", "asset": "<asset tag>"}``.
Each message asks for one team, decidable from keywords (``team_of``), and names the device's asset tag: three
capital letters for the device type, a dash and 5 digits (``LAP-48213``), to be copied exactly.

What production logged (``demo.logs.generate_logs(ItHelpdesk(), ...)``):
- the production model is right on ~85-90 % of the requests of most teams, but SYSTEMATICALLY wrong on two
  (defaults: ``access`` requests are mostly routed to ``software``; ``security`` requests mostly get a mangled
  asset tag), so imitating the logs copies the mistakes;
- feedback has no ``resolved`` and no ``escalated``: only ``thumbs`` (on ~60 % of the answers, ``label_noise`` of
  them contradicting correctness) and ``edited`` (a technician re-routed the ticket: mostly on wrong answers).
  The pipeline's labels and the warm start's ``is_good`` therefore rest on ``thumbs``.
"""
from __future__ import annotations

import json
import random
import re

from demo.logs import kind_by_keywords, parse_json_fields

TEAMS = ("network", "hardware", "access", "software", "security")
NAME = "it_helpdesk"
PROJECT = "helpdesk-bot"
MODEL_VERSION = f"{PROJECT}@champion/7"
DEVICES = {"LAP": "laptop", "DSK": "desktop", "WKS": "workstation", "TAB": "tablet"}  # asset tag prefix -> noun
SYSTEM_PROMPT = (
    "You are the IT helpdesk router of Globex. Read the employee's request and answer with ONE line of JSON and "
    'nothing else: {"team": "<team>", "asset": "<asset tag>"}. The team is one of: ' + ", ".join(TEAMS)
    + ". The asset is the device's asset tag (like LAP-48213), copied exactly."
)

PHRASINGS: dict[str, tuple[str, ...]] = {
    "network": (
        "My {dev} {tag} can't get on the wifi.", "VPN keeps dropping on {tag}.",
        "No internet on {dev} {tag} since this morning.", "{tag} shows the network as unavailable.",
        "The ethernet cable at my desk gives {tag} nothing.", "Wi-Fi is super slow on {tag}.",
        "{dev} {tag} says it is offline even though the cable is plugged in.",
        "Can't reach the VPN from home with {tag}.",
        "DNS lookups fail on {tag}, websites won't load.", "My {dev} {tag} keeps disconnecting from the office wifi.",
        "Internet is really slow on asset {tag}.", "The VPN client on {tag} times out.",
        "{tag} gets no IP address on the guest network.", "Packet loss on {tag} during video calls.",
        "Cannot join the wireless network with {dev} {tag}.", "{tag} drops off the network every few minutes.",
        "Proxy errors on {tag}, no internet at all.", "The hotspot won't work for {dev} {tag}.",
        "Asset {tag}: VPN connection refused.", "Huge latency on the network from {tag}.",
        "Ethernet not detected on {tag}.",
    ),
    "hardware": (
        "The screen on my {dev} {tag} is cracked.", "Battery on {tag} drains in an hour.",
        "Keyboard of {dev} {tag} has dead keys.", "{tag} won't turn on at all.",
        "The fan on {tag} is really loud and it overheats.", "My charger for {tag} stopped working.",
        "The trackpad on {dev} {tag} is unresponsive.", "{dev} {tag} display flickers constantly.",
        "I spilled coffee on {tag}.", "The docking station does not charge {tag}.",
        "Webcam on {tag} shows a black image.", "Speakers on {dev} {tag} crackle.", "The hinge on {tag} snapped.",
        "{tag} makes a beeping noise at startup.", "USB ports on {tag} are dead.",
        "The power button on {dev} {tag} is stuck.", "My mouse doesn't work with {tag}.",
        "Asset {tag}: cracked screen, need a repair.", "{dev} {tag} overheats and shuts down.",
        "The battery of {tag} is swollen.", "Headset jack on {tag} is broken.",
    ),
    "access": (
        "I'm locked out of {dev} {tag}.", "Forgot my password, can't log in on {tag}.",
        "Need access to the finance shared drive from {tag}.", "Please reset my password, asset {tag}.",
        "I don't have permission to open the HR folder on {tag}.", "Can't sign in to {dev} {tag} after the holiday.",
        "Requesting admin rights on {tag}.", "My MFA code never arrives when I use {tag}.",
        "Please unlock my account, I use {tag}.", "Login fails on {tag} with my new badge.",
        "Need access to the sales CRM from {dev} {tag}.", "Permission denied when I open the project share on {tag}.",
        "New starter needs a login for {tag}.", "My account is locked out on {tag}.",
        "Two-factor codes are rejected when I log in on {tag}.",
        "Can you give me access to the design folder? My {dev} is {tag}.",
        "Password expired and I can't change it on {tag}.", "I can't log in to {dev} {tag} anymore.",
        "Need read access to the legal folder on {tag}.", "Asset {tag}: access request for the payroll system.",
        "Reset my PIN so I can sign in on {tag}.",
    ),
    "software": (
        "Please install Python on {dev} {tag}.", "Outlook crashes on {tag} every morning.",
        "Excel freezes when I open big files on {tag}.", "{tag} needs the latest Office update.",
        "My license for the design app expired on {tag}.", "Can you upgrade Windows on {dev} {tag}?",
        "The accounting application shows an error message on {tag}.", "Need Zoom installed on {tag}.",
        "Browser keeps crashing on {tag}.", "Install the PDF editor on {tag} please.",
        "Teams app won't start on {dev} {tag}.", "Update the graphics driver on {tag}.",
        "The ERP application hangs on {tag}.", "Outlook won't sync on {tag}.",
        "Excel macros stopped working on {tag} after the update.", "Need a license for Photoshop on {dev} {tag}.",
        "The installer fails on {tag}.", "My calendar app crashes on {tag}.",
        "Can I get Visual Studio installed on {tag}?", "Software update stuck halfway on {tag}.",
        "Asset {tag}: the CRM plugin throws an error message.",
    ),
    "security": (
        "I clicked a phishing link on {dev} {tag}.", "{tag} might have a virus.", "Antivirus flagged malware on {tag}.",
        "My {dev} {tag} was stolen from my car.", "I lost {dev} {tag} on the train.",
        "Suspicious pop-ups keep appearing on {tag}.", "I think {tag} has been hacked.", "Ransomware message on {tag}!",
        "Got a suspicious email and opened the attachment on {tag}.", "My account on {tag} may be compromised.",
        "Files on {tag} are suddenly encrypted.", "Report a security incident: {dev} {tag}.",
        "A stranger was using {tag} at my desk, looks like a breach.", "Possible data breach from {dev} {tag}.",
        "Phishing email reported from {tag}.", "The antivirus on {tag} is disabled and I didn't do it.",
        "Malware warning on {dev} {tag}.", "{tag} went missing at the airport.",
        "Strange programs appeared on {tag}, could be malware.", "Our security scanner quarantined files on {tag}.",
        "I typed my credentials into a fake site from {tag}.",
    ),
}
_PREFIXES = ("", "", "Hi IT, ", "Hello, ", "Hi team, ", "Morning. ", "Quick one: ")
_SUFFIXES = ("", "", " Thanks.", " Thanks in advance!", " Can someone help?", " Cheers.")

_KEYWORDS: dict[str, str] = {
    "network": r"wi-?fi|vpn|internet|network|ethernet|offline|dns|ip address|packet loss|wireless|proxy|hotspot|"
               r"latency",
    "hardware": r"screen|battery|keyboard|won't turn on|fan|charger|charge|trackpad|display|spilled|webcam|speakers|"
                r"hinge|beeping|usb ports|power button|mouse|overheats|headset",
    "access": r"locked out|password|log in|login|access|permission\w*|sign in|admin rights|mfa|unlock|two-factor|pin",
    "software": r"install\w*|outlook|excel|update|licen[cs]e|upgrade|application|crash\w*|app|driver|freezes|plugin|"
                r"error message|software",
    "security": r"phishing|virus|antivirus|malware|stolen|lost|suspicious|hacked|ransomware|compromised|encrypted|"
                r"security|breach|missing|fake site",
}
_KEYWORD_RES = {team: re.compile(rf"\b(?:{pattern})\b", re.IGNORECASE) for team, pattern in _KEYWORDS.items()}
ASSET_PATTERN = r"\b[A-Z]{3}-\d{5}\b"
_ASSET = re.compile(ASSET_PATTERN)

# Production model: share of correct answers per team, and the systematic mistake it makes on a team.
DEFAULT_TEAM_ACCURACY = {"network": 0.9, "hardware": 0.88, "access": 0.12, "software": 0.87, "security": 0.15}
DEFAULT_ERROR_MODES = {"access": "team:software", "security": "asset"}  # 90 % of that team's errors


def team_of(text: str) -> str | None:
    """The team a request is for, by keywords (most hits wins, ties in ``TEAMS`` order); None if no keyword.

    >>> team_of("VPN keeps dropping on LAP-48213.")
    'network'
    """
    return kind_by_keywords(text, _KEYWORD_RES, TEAMS)


def asset_in(text: str) -> str | None:
    """The first asset tag (``LAP-48213``) in ``text``."""
    m = _ASSET.search(text)
    return m.group(0) if m else None


def random_asset(rng: random.Random) -> str:
    """A fresh asset tag: a device prefix of ``DEVICES``, a dash, 5 digits."""
    return f"{rng.choice(list(DEVICES))}-{rng.randint(10000, 99999)}"


def answer_line(team: str, asset: str) -> str:
    """An answer line: ``{"team": "access", "asset": "LAP-48213"}``."""
    return json.dumps({"team": team, "asset": asset})


def parse_answer(text: str) -> dict | None:
    """``{"team", "asset"}`` if ``text`` is one JSON object with both as strings, else None."""
    return parse_json_fields(text, ("team", "asset"))


def mangle_asset(rng: random.Random, asset: str) -> str:
    """A near-miss of ``asset``: one digit changed (70 %), the dash dropped (15 %) or another device prefix (15 %)."""
    prefix, digits = asset.split("-")
    mode = rng.choices(["digit", "dash", "prefix"], weights=[0.7, 0.15, 0.15])[0]
    if mode == "dash":
        return prefix + digits
    if mode == "prefix":
        return rng.choice([p for p in DEVICES if p != prefix]) + "-" + digits
    pos = rng.randrange(len(digits))
    digit = rng.choice([d for d in "0123456789" if d != digits[pos]])
    return f"{prefix}-{digits[:pos]}{digit}{digits[pos + 1:]}"


def _wrong_answer(rng: random.Random, team: str, asset: str, mode: str) -> str:
    if mode.startswith("team:"):
        wrong = mode.split(":", 1)[1]
        if wrong == "*" or wrong == team:
            wrong = rng.choice([t for t in TEAMS if t != team])
        return answer_line(wrong, asset)
    if mode == "asset":
        return answer_line(team, mangle_asset(rng, asset))
    return rng.choice([
        answer_line(team, asset)[:-1],
        f"Routing to the {team} team for {asset}.",
        f"team={team} asset={asset}",
        f"{{'team': '{team}', 'asset': '{asset}'}}",
        "I have opened a ticket for you.",
    ])


class ItHelpdesk:
    """IT helpdesk routing as a ``demo.logs.DemoTask``: kinds are the teams, gold is ``{"kind", "team", "asset"}``.

    ``error_modes`` overrides the production model's systematic mistake per team (``DEFAULT_ERROR_MODES``):
    ``team:<other>`` (routed to another team, ``*`` = any), ``asset`` (asset tag mangled) or ``malformed``.
    """

    NAME = NAME
    PROJECT = PROJECT
    MODEL_VERSION = MODEL_VERSION
    DESCRIPTION = "Globex IT helpdesk routing: the team an employee's request goes to and the device's asset tag"
    KINDS = TEAMS
    DEFAULT_ACCURACY = DEFAULT_TEAM_ACCURACY

    def __init__(self, error_modes: dict[str, str] | None = None):
        self.error_modes = DEFAULT_ERROR_MODES if error_modes is None else error_modes

    def make_prompt(self, rng: random.Random, kind: str | None = None) -> tuple[list[dict], dict]:
        """A (system, user) chat asking for team ``kind`` (random if None) about a random asset."""
        team = kind or rng.choice(TEAMS)
        asset = random_asset(rng)
        body = rng.choice(PHRASINGS[team]).format(dev=DEVICES[asset.split("-")[0]], tag=asset)
        text = rng.choice(_PREFIXES) + body[0].upper() + body[1:] + rng.choice(_SUFFIXES)
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}]
        return messages, {"kind": team, "team": team, "asset": asset}

    def production_answer(self, rng: random.Random, gold: dict, accuracy: dict[str, float]) -> tuple[str, bool]:
        """Right with ``accuracy[team]``, else the team's systematic mistake (90 %) or a random one."""
        team, asset = gold["team"], gold["asset"]
        if rng.random() < accuracy.get(team, 0.8):
            return answer_line(team, asset), True
        mode = self.error_modes.get(team) if rng.random() < 0.9 else None
        if mode is None:
            mode = rng.choices(["team:*", "asset", "malformed"], weights=[0.5, 0.35, 0.15])[0]
        completion = _wrong_answer(rng, team, asset, mode)
        return completion, self.is_correct(completion, gold)

    def feedback(self, rng: random.Random, correct: bool, label_noise: float) -> dict:
        """``thumbs`` on ~60 % of the answers (``label_noise`` of them flipped), ``edited`` mostly on wrong ones."""
        thumbs = None
        if rng.random() < 0.6:
            good = (not correct) if rng.random() < label_noise else correct
            thumbs = 1 if good else -1
        return {"thumbs": thumbs, "edited": rng.random() < (0.04 if correct else 0.5)}

    def gold_completion(self, gold: dict) -> str:
        return answer_line(gold["team"], gold["asset"])

    def is_correct(self, answer: str, gold: dict) -> bool:
        """Valid JSON answer with the right team and exactly the right asset tag."""
        parsed = parse_answer(answer)
        return parsed is not None and parsed["team"] == gold["team"] and parsed["asset"] == gold["asset"]

    def reward_components(self) -> list[dict]:
        """The answer schema, the asset-tag copy rule, the reward model and a KPI on the feedback this task has
        (thumbs up, ticket not edited); no not_degenerate rule, as the schema rule already scores degenerate
        answers 0."""
        from flywheel.rewards.spec import default_components

        schema = {"type": "object", "required": ["team", "asset"], "additionalProperties": False,
                  "properties": {"team": {"enum": list(TEAMS)},
                                 "asset": {"type": "string", "pattern": r"^[A-Z]{3}-\d{5}$"}}}
        defaults = [c.model_dump() for c in default_components() if c.kind == "reward_model"]
        return [
            {"name": "format", "kind": "rule", "weight": 1.0, "params": {"check": "json_schema", "schema": schema}},
            {"name": "asset", "kind": "rule", "weight": 1.0,
             "params": {"check": "extract_compare", "pattern": ASSET_PATTERN}},
            *defaults,
            {"name": "kpi", "kind": "kpi", "weight": 1.0, "params": {"thumbs": 1.0, "edited": -1.0}},
        ]

