"""The incident table: every job that hit a time limit, lost its worker or failed on the LLM,
and every process the supervisor had to restart, recorded automatically.

It replaces the runbook's hand-kept フリーズ事例 table; `to_markdown` prints that table.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace

import redis
from redis.client import Pipeline

from core import keys
from core.models import Job, iso, utcnow
from core.secrets import scrub

logger = logging.getLogger(__name__)

INPUT_CHARS = 200
INCIDENT_CODES = {"timeout", "llm_timeout", "llm_error", "worker_lost", "expired",
                  "store_unavailable", "internal"}
SITUATION = {  # 発生状況, as the runbook's table words it
    "timeout": "応答生成が制限時間を超過",
    "llm_timeout": "Gemini 応答待ちがタイムアウト",
    "llm_error": "Gemini がエラー応答",
    "worker_lost": "ワーカープロセスが停止",
    "expired": "処理が開始されないまま期限切れ",
    "store_unavailable": "処理中に Redis との接続が切断",
    "internal": "内部エラー（不具合）",
    "process_exit": "プロセスが停止",
}


@dataclass(frozen=True)
class Incident:
    at: str
    kind: str  # an error code, or "process_exit"
    job_id: str | None
    conversation_id: str | None
    step: str | None  # where it stopped
    input: str
    cause: str  # error code and exception
    action: str  # what was done: killed, retried, worker replaced, restarted

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


class IncidentLog:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def record(self, incident: Incident, *, pipe: Pipeline | None = None) -> None:
        """Append an incident; with `pipe`, inside the caller's transaction."""
        incident = scrubbed(incident)
        if pipe is not None:
            push(pipe, incident)  # the caller logs once its transaction is applied
            return
        with self._redis.pipeline(transaction=True) as own:
            push(own, incident)
            own.execute()
        logger.warning("incident: %s at %s: %s -> %s", incident.kind, incident.step or "-",
                       incident.cause, incident.action)

    def record_job(self, job: Job, *, exception: str, action: str,
                   pipe: Pipeline | None = None) -> None:
        code = job.error.code if job.error else "unknown"
        self.record(Incident(at=iso(utcnow()) or "", kind=code, job_id=job.id,
                             conversation_id=job.conversation_id, step=failed_step(job),
                             input=job.input_preview[:INPUT_CHARS],
                             cause=f"{code}: {exception}", action=action), pipe=pipe)

    def record_process_exit(self, *, name: str, cause: str, action: str) -> None:
        self.record(Incident(at=iso(utcnow()) or "", kind="process_exit", job_id=None,
                             conversation_id=None, step=name, input="", cause=cause,
                             action=action))

    def newest(self, *, limit: int = 50) -> list[Incident]:
        raws = self._redis.lrange(keys.incidents(), 0, max(0, limit - 1))
        return [Incident(**json.loads(raw)) for raw in raws]


def push(pipe: Pipeline, incident: Incident) -> None:
    pipe.lpush(keys.incidents(), incident.to_json())
    pipe.ltrim(keys.incidents(), 0, keys.incidents_max - 1)


def scrubbed(incident: Incident) -> Incident:
    """Exception texts may quote a request; the key must never be stored with them."""
    return replace(incident, input=scrub(incident.input), cause=scrub(incident.cause),
                   action=scrub(incident.action))


def failed_step(job: Job) -> str | None:
    for step in job.steps:
        if step.status.value in ("failed", "in_progress"):
            return step.name
    return job.current_step()


def is_incident(job: Job) -> bool:
    return job.error is not None and job.error.code in INCIDENT_CODES


def escape_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(incidents: list[Incident]) -> str:
    """The runbook's table: 発生日時 | 発生状況 | 入力内容 | 根本原因 | 解決策."""
    lines = ["| 発生日時 | 発生状況 | 入力内容 | 根本原因 | 解決策 |",
             "|---------|---------|---------|---------|-------|"]
    for i in incidents:
        when = i.at.replace("T", " ")[:19] + " UTC"
        situation = SITUATION.get(i.kind, i.kind) + (f"（{i.step}）" if i.step else "")
        lines.append("| " + " | ".join(escape_cell(c) for c in (
            when, situation, f'"{i.input}"' if i.input else "-", i.cause, i.action)) + " |")
    return "\n".join(lines)
