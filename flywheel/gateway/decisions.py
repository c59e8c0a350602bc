"""The canary decisions taken since the previous night, for the night's summary.

Two places record them: ``<state>/gateway/decisions.jsonl`` (every decision of the live monitor that changed
something, and every ``flywheel canary`` look, ``"from": "logs"``) and the registry's version tags
(``canary_decision`` / ``canary_reason`` / ``canary_at``: also a canary superseded by a newer release, or ended by a
failed deploy smoke test, which never pass through the monitor). ``canary_summary`` merges both over the window
since the previous night's summary and says where the current canary stands.

The window: ``<state>/gateway/nights.json`` remembers, per night, when its summary was made. Night D covers what
happened after the latest earlier night's summary (everything, on the first night) up to now; a rerun of night D
keeps D's start, so it shows the same decisions and any newer ones.
"""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, Field

from flywheel.gateway.rows import now_iso

MAX_SHOWN = 50  # decisions kept in one night's summary (the newest)


class CanaryEntry(BaseModel):
    """One canary decision, as the summary shows it."""

    at: str
    source: str = Field(description="live (the gateway's monitor) | logs (flywheel canary) | registry (a tag)")
    challenger_version: int | None = None
    champion_version: int | None = None
    decision: str  # promote | keep | rollback | superseded | rolled_back ...
    applied: str = ""  # promoted | rolled_back | stale | recorded | no
    reason: str = ""
    labelled: dict[str, int] = Field(default_factory=dict)  # labelled requests per arm
    kpi_rate: dict[str, float | None] = Field(default_factory=dict)
    msprt_lambda: float | None = None


class CanarySummary(BaseModel):
    """The canary decisions of one night's window and the registry's aliases now."""

    since: str | None  # None: from the beginning
    until: str
    entries: list[CanaryEntry] = Field(default_factory=list)
    champion_version: int | None = None
    challenger_version: int | None = None
    error: str | None = None  # the registry could not be read (the jsonl entries are still shown)

    @property
    def status(self) -> str:
        if self.challenger_version is None or self.challenger_version == self.champion_version:
            return "no canary running"
        return f"canary running: challenger v{self.challenger_version} vs champion v{self.champion_version}"


def night_window(state_dir: str | Path, day: str, now: str | None = None) -> tuple[str | None, str]:
    """(since, until) of night ``day``'s summary, recorded in ``<state>/gateway/nights.json``."""
    path = Path(state_dir) / "gateway" / "nights.json"
    nights = json.loads(path.read_text()) if path.is_file() else {}
    until = now or now_iso()
    earlier = [v["until"] for d, v in nights.items() if d < day and v.get("until")]
    since = nights.get(day, {}).get("since", max(earlier) if earlier else None)
    nights[day] = {"since": since, "until": until}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(nights, indent=1, sort_keys=True))
    tmp.replace(path)
    return since, until


def _entry_of_record(rec: dict) -> CanaryEntry:
    stats = rec.get("stats") or {}
    arms = {arm: stats.get(arm) or {} for arm in ("champion", "challenger")}
    return CanaryEntry(at=str(rec.get("at") or ""), source="logs" if rec.get("from") == "logs" else "live",
                       challenger_version=rec.get("challenger_version"), champion_version=rec.get("champion_version"),
                       decision=str(rec.get("decision")), applied=str(rec.get("applied") or ""),
                       reason=str(rec.get("reason") or "")[:400],
                       labelled={arm: int(a.get("labelled") or 0) for arm, a in arms.items()},
                       kpi_rate={arm: a.get("kpi_rate") for arm, a in arms.items()},
                       msprt_lambda=stats.get("msprt_lambda"))


def read_decisions(state_dir: str | Path, since: str | None, until: str) -> list[CanaryEntry]:
    """Entries of ``decisions.jsonl`` with ``since < at <= until`` (lines that do not parse are skipped)."""
    path = Path(state_dir) / "gateway" / "decisions.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        at = str(rec.get("at") or "") if isinstance(rec, dict) else ""
        if at and (since is None or at > since) and at <= until:
            out.append(_entry_of_record(rec))
    return out


def _tag_entries(client, model_name: str, since: str | None, until: str) -> list[CanaryEntry]:
    out = []
    for mv in client.search_model_versions(f"name='{model_name}'"):
        tags, at = mv.tags, mv.tags.get("canary_at", "")
        if tags.get("canary_decision") and at and (since is None or at > since) and at <= until:
            out.append(CanaryEntry(at=at, source="registry", challenger_version=int(mv.version),
                                   decision=tags["canary_decision"], applied=tags["canary_decision"],
                                   reason=tags.get("canary_reason", "")[:400]))
    return out


def canary_summary(cfg, day: str, now: str | None = None) -> CanarySummary:
    """The canary decisions since the previous night's summary (jsonl + registry tags) and the aliases now."""
    from flywheel.gateway.aliases import AliasView

    since, until = night_window(cfg.state, day, now)
    entries = read_decisions(cfg.state, since, until)
    summary = CanarySummary(since=since, until=until)
    aliases = AliasView.from_config(cfg)
    if aliases.tracking_uri is not None:
        try:
            from flywheel.registry import CHALLENGER, CHAMPION, alias_version, client_for

            client = client_for(aliases.tracking_uri)
            seen = {(e.challenger_version, e.applied) for e in entries}
            entries += [e for e in _tag_entries(client, aliases.model_name, since, until)
                        if (e.challenger_version, e.applied) not in seen]
            summary.champion_version = alias_version(client, aliases.model_name, CHAMPION)
            summary.challenger_version = alias_version(client, aliases.model_name, CHALLENGER)
        except Exception as e:  # noqa: BLE001 - the summary must not fail the night
            summary.error = f"{type(e).__name__}: {e}"[:300]
    summary.entries = sorted(entries, key=lambda e: e.at)[-MAX_SHOWN:]
    return summary


def summary_lines(summary: CanarySummary) -> list[str]:
    """Markdown lines of the summary's canary section."""
    window = f"since {summary.since}" if summary.since else "so far"
    lines = [f"## Canary ({window})", "", f"{summary.status}." + (f" Registry: {summary.error}" if summary.error
                                                                  else "")]
    if not summary.entries:
        return lines + ["", "No canary decisions in this window."]
    lines += ["", "| at | challenger | champion | decision | applied | labelled (challenger / champion) | Λ | reason |",
              "|---|---|---|---|---|---|---|---|"]
    for e in summary.entries:
        labelled = (f"{e.labelled.get('challenger', 0)} / {e.labelled.get('champion', 0)}" if e.labelled else "-")
        reason = e.reason.replace("|", "/").replace("\n", " ")[:160]
        lines.append(f"| {e.at} | v{e.challenger_version or '-'} | v{e.champion_version or '-'} | {e.decision} | "
                     f"{e.applied or '-'} | {labelled} | {'-' if e.msprt_lambda is None else e.msprt_lambda} | "
                     f"{reason} |")
    return lines


def table_rows(summary: CanarySummary) -> list[dict]:
    """Flat rows of the summary's entries (a Prefect table artifact)."""
    return [{"at": e.at, "source": e.source, "challenger": e.challenger_version, "champion": e.champion_version,
             "decision": e.decision, "applied": e.applied,
             "labelled_challenger": e.labelled.get("challenger"), "labelled_champion": e.labelled.get("champion"),
             "msprt_lambda": e.msprt_lambda, "reason": e.reason} for e in summary.entries]
