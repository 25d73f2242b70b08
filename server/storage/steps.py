"""The step contract: the JSON of ``orchestration_steps.spec`` and the outcomes of an attempt.

``spec`` is written once by StartRun (``build_steps`` in ``engine/runs.py``: the step as
the definition gives it, in protobuf JSON form with proto field names, with its effective
``on_failure`` and ``caching``) and then amended by the SQL functions, which also read it:

- ``podium_decide_approval`` sets ``checkpoint_passed`` and ``approved_input`` (approval of
  a ``checkpoint: before``) and ``answer`` (the answer to an A2A agent's question);
- ``podium_sleep_step`` and ``podium_wait_event`` set ``wake_at`` (the deadline of a
  sleep or a wait, fixed by the first claim), ``podium_wait_event`` and
  ``podium_send_event`` set ``received_event`` (the event delivered to a wait);
- ``podium_iterate_step`` sets ``loop_iteration`` and ``loop_output`` (an iteration of a
  loop step);
- ``podium_resume_run`` removes those seven again;
- ``podium_create_run`` sets ``budgeted`` when a budget applies to the run
  (``functions/65_budgets.sql``); ``build_steps`` sets ``routing`` (the definition's
  ``execution.routing``, read by the claim and the executor; ``engine/policies.py``);
- the claim (``podium_claim_steps_of``) adds ``refused_agents`` to the spec it returns,
  never to the stored one, for a skill step it claimed without an agent because the
  routing policies refuse every agent offering the skill;
- ``podium_park_step`` reads ``checkpoint_passed`` and ``checkpoint`` (``prompt``,
  ``approvers``, ``expires_after_seconds``, ``on_expiry``, ``on_reject``);
- ``podium_skip_step`` reads ``on_failure.skip_dependents``, ``podium_resume_run``
  ``on_failure.max_attempts``, ``podium_fail_run`` ``rollback.hint``.

Python reads and writes it only through :class:`StepSpec` (storage parses it where the
engine reads rows: ``ClaimedStep.spec``, ``FinishedChild.spec``), so this module is the
one place in Python that spells its top-level keys (those inside ``sleep`` and
``wait_for_event`` are in :mod:`.step_waits`). Parsing keeps values as they are (no type
coercion: jsonb keeps ``30`` and ``30.0`` apart) and keeps unknown top-level keys, so
``StepSpec.from_json(d).to_json() == d`` and the JSON written stays what the SQL reads.
(``StepRow.spec``, returned by the read RPCs, stays the stored JSON.)

:class:`Outcome` lists what ``podium_complete_step`` accepts as ``p_outcome`` (a test
compares it with the functions' source); :class:`StepError` is the ``error`` JSON of a
step and of an attempt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .step_waits import OnTimeout, SleepSpec, WaitForEventSpec

__all__ = [
    "Answer",
    "Backoff",
    "CachePolicy",
    "CheckpointPolicy",
    "CheckpointWhen",
    "MAX_ERROR_CODE_CHARS",
    "MAX_ERROR_MESSAGE_CHARS",
    "FailurePolicy",
    "OrchestrationTarget",
    "PlanTarget",
    "OnTimeout",
    "Outcome",
    "Rollback",
    "SleepSpec",
    "StepError",
    "StepLoop",
    "StepSpec",
    "WaitForEventSpec",
]

Json = dict[str, Any]


class Outcome(StrEnum):
    """The outcome of one attempt, as ``podium_complete_step`` takes it (``p_outcome``)."""

    SUCCEEDED = "succeeded"
    """The agent succeeded; dependents may run."""
    FAILED = "failed"
    """Final failure: the run fails."""
    RETRY = "retry"
    """A retryable failure with attempts left: the step waits until ``next_attempt_at``."""
    CHECKPOINT_BEFORE = "checkpoint_before"
    """Parked on an approval of its resolved input before dispatch (not an attempt)."""
    CHECKPOINT_AFTER = "checkpoint_after"
    """Succeeded; parked on an approval of its output before dependents see it."""
    REVIEW = "review"
    """The last attempt failed and ``notify_human``: parked on a failure review."""
    SKIPPED = "skipped"
    """The last attempt failed and ``allow_skip``: the step is skipped."""
    INPUT_REQUIRED = "input_required"
    """An A2A agent asked a question: parked until it is answered."""
    ITERATE = "iterate"
    """An iteration of a loop step succeeded and its ``until`` does not hold yet: the
    step is queued again (``podium_iterate_step``)."""


WITH_OUTPUT = frozenset(
    {
        Outcome.SUCCEEDED,
        Outcome.CHECKPOINT_AFTER,
        Outcome.INPUT_REQUIRED,
        Outcome.CHECKPOINT_BEFORE,
        Outcome.ITERATE,
    }
)
"""Outcomes whose output is sent to the database: the agent's output, the question of
``input_required`` (the approval's subject), ``{"task_id": ...}`` of ``checkpoint_before``
(the fence of the park)."""


class CheckpointWhen(StrEnum):
    """``CheckpointPolicy.When`` by its proto enum name, as protobuf JSON spells it."""

    UNSPECIFIED = "WHEN_UNSPECIFIED"
    BEFORE = "WHEN_BEFORE"
    AFTER = "WHEN_AFTER"


_WHENS = {w.value: w for w in CheckpointWhen}


MAX_ERROR_MESSAGE_CHARS = 4096
"""Longest error message stored for a step or attempt."""
MAX_ERROR_CODE_CHARS = 128
"""Longest error code stored."""


@dataclass(frozen=True, slots=True)
class StepError:
    """The ``error`` of a step or an attempt: a stable UPPER_SNAKE ``code``, a message,
    and whether another attempt may succeed."""

    code: str
    message: str
    retryable: bool = False

    def to_json(self) -> Json:
        """The stored form; a message longer than ``MAX_ERROR_MESSAGE_CHARS`` (an agent's
        error text is not bounded otherwise) is cut there, saying how much was cut, so
        a step's errors (one per attempt) never crowd a GetRun response out."""
        message = self.message
        if len(message) > MAX_ERROR_MESSAGE_CHARS:
            cut = len(message) - MAX_ERROR_MESSAGE_CHARS
            message = f"{message[:MAX_ERROR_MESSAGE_CHARS]}... ({cut} more characters)"
        code = self.code[:MAX_ERROR_CODE_CHARS]
        return {"code": code, "message": message, "retryable": self.retryable}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StepError:
        return cls(
            code=str(data.get("code") or ""),
            message=str(data.get("message") or ""),
            retryable=bool(data.get("retryable", False)),
        )


def _put(out: Json, key: str, value: Any) -> None:
    if value is not None:
        out[key] = value


@dataclass(frozen=True, slots=True)
class Backoff:
    """``on_failure.backoff``; an absent field takes the engine's default."""

    initial_seconds: float | None = None
    multiplier: float | None = None
    max_seconds: float | None = None

    def to_json(self) -> Json:
        out: Json = {}
        _put(out, "initial_seconds", self.initial_seconds)
        _put(out, "multiplier", self.multiplier)
        _put(out, "max_seconds", self.max_seconds)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Backoff:
        return cls(data.get("initial_seconds"), data.get("multiplier"), data.get("max_seconds"))


@dataclass(frozen=True, slots=True)
class FailurePolicy:
    """``on_failure``: the step's effective failure policy (the step's fields over the
    definition's ``on_step_failure``); absent fields are absent from the JSON."""

    max_attempts: int | None = None
    notify_human: bool | None = None
    allow_skip: bool | None = None
    skip_dependents: bool | None = None
    backoff: Backoff | None = None

    @property
    def attempts(self) -> int:
        """Attempts allowed, including the first (at least 1)."""
        return max(1, int(self.max_attempts or 1))

    def to_json(self) -> Json:
        out: Json = {}
        _put(out, "max_attempts", self.max_attempts)
        _put(out, "notify_human", self.notify_human)
        _put(out, "allow_skip", self.allow_skip)
        _put(out, "skip_dependents", self.skip_dependents)
        if self.backoff is not None:
            out["backoff"] = self.backoff.to_json()
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FailurePolicy:
        backoff = data.get("backoff")
        return cls(
            max_attempts=data.get("max_attempts"),
            notify_human=data.get("notify_human"),
            allow_skip=data.get("allow_skip"),
            skip_dependents=data.get("skip_dependents"),
            backoff=Backoff.from_json(backoff) if isinstance(backoff, dict) else None,
        )


NO_FAILURE_POLICY = FailurePolicy()


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """``caching``: the step's effective caching policy, resolved by StartRun
    (``engine/cache.py`` documents the key built from ``scope``, ``target`` and
    ``key_paths``). Its presence means the step is cached."""

    ttl_seconds: float
    key_paths: tuple[str, ...]
    scope: Mapping[str, Any]
    """``{"definition": name, "version": n}`` or ``{"plan_sha256": hex}``."""
    target: Mapping[str, Any]
    """``{"agent": name}`` or ``{"skill": name}``."""
    key_step: str | None = None
    """The step id the key names instead of the row's (the items of a ``for_each`` step
    name that step, so identical items share a key)."""

    def to_json(self) -> Json:
        out: Json = {
            "ttl_seconds": self.ttl_seconds,
            "key_paths": list(self.key_paths),
            "scope": dict(self.scope),
            "target": dict(self.target),
        }
        _put(out, "key_step", self.key_step)
        return out

    @classmethod
    def from_json(cls, data: Any) -> CachePolicy | None:
        """The policy, or None for anything else (a run stored before the cache existed
        keeps the author's ``caching`` form there: not cached)."""
        if not (isinstance(data, dict) and "scope" in data and "target" in data):
            return None
        return cls(
            ttl_seconds=data.get("ttl_seconds") or 0.0,
            key_paths=tuple(data.get("key_paths") or ()),
            scope=data["scope"],
            target=data["target"],
            key_step=data.get("key_step"),
        )


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    """``checkpoint``: a human approval before or after the step (read by the SQL that
    parks the step: ``prompt``, ``approvers``, ``expires_after_seconds``, ``on_expiry``
    (``EXPIRY_ACTION_*``), ``on_reject`` (``REJECT_ACTION_*``))."""

    when: CheckpointWhen | None = None
    prompt: str | None = None
    approvers: tuple[str, ...] | None = None
    expires_after_seconds: float | None = None
    on_expiry: str | None = None
    on_reject: str | None = None

    def to_json(self) -> Json:
        out: Json = {}
        _put(out, "when", None if self.when is None else self.when.value)
        _put(out, "prompt", self.prompt)
        _put(out, "approvers", None if self.approvers is None else list(self.approvers))
        _put(out, "expires_after_seconds", self.expires_after_seconds)
        _put(out, "on_expiry", self.on_expiry)
        _put(out, "on_reject", self.on_reject)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CheckpointPolicy:
        approvers = data.get("approvers")
        return cls(
            when=_WHENS.get(str(data.get("when"))),
            prompt=data.get("prompt"),
            approvers=None if approvers is None else tuple(approvers),
            expires_after_seconds=data.get("expires_after_seconds"),
            on_expiry=data.get("on_expiry"),
            on_reject=data.get("on_reject"),
        )


@dataclass(frozen=True, slots=True)
class OrchestrationTarget:
    """``orchestration``: the definition a sub-orchestration step runs as a child run
    (``version`` absent or 0: the latest when the child starts)."""

    name: str
    version: int | None = None

    def to_json(self) -> Json:
        out: Json = {"name": self.name}
        _put(out, "version", self.version)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OrchestrationTarget:
        return cls(name=data.get("name", ""), version=data.get("version"))


@dataclass(frozen=True, slots=True)
class PlanTarget:
    """``plan``: the planner agent whose output (a definition) a plan step runs as its
    child run."""

    agent: str

    def to_json(self) -> Json:
        return {"agent": self.agent}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PlanTarget:
        return cls(agent=str(data.get("agent", "")))


@dataclass(frozen=True, slots=True)
class Answer:
    """``answer``, written by the decision on an ``input_required`` approval: the input
    that attempt ``attempt`` sends to the A2A task ``task_id`` (which asked for it)."""

    attempt: int | None
    task_id: str | None
    input: Any = None

    def to_json(self) -> Json:
        return {"attempt": self.attempt, "task_id": self.task_id, "input": self.input}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Answer:
        return cls(data.get("attempt"), data.get("task_id"), data.get("input"))


@dataclass(frozen=True, slots=True)
class Rollback:
    """``rollback``: the hint shown to operators when the run fails (never executed)."""

    hint: str | None = None

    def to_json(self) -> Json:
        out: Json = {}
        _put(out, "hint", self.hint)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Rollback:
        return cls(data.get("hint"))


_KNOWN = frozenset(
    {
        "id",
        "agent",
        "skill",
        "routing",
        "orchestration",
        "plan",
        "depends_on",
        "input",
        "checkpoint",
        "on_failure",
        "timeout_seconds",
        "caching",
        "description",
        "rollback",
        "bypass_cache",
        "approved_input",
        "checkpoint_passed",
        "answer",
        "sleep",
        "wait_for_event",
        "wake_at",
        "received_event",
        "when",
        "run_metadata",
        "loop",
        "loop_iteration",
        "loop_output",
        "for_each",
        "max_parallel",
        "budgeted",
        "refused_agents",
    }
)


@dataclass(frozen=True, slots=True)
class StepLoop:
    """A loop step's ``loop``: ``until`` (CEL; None runs ``max_iterations`` times)."""

    until: str | None = None
    max_iterations: int | None = None

    def to_json(self) -> Json:
        out: Json = {}
        _put(out, "until", self.until)
        _put(out, "max_iterations", self.max_iterations)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StepLoop:
        return cls(until=data.get("until"), max_iterations=data.get("max_iterations"))


@dataclass(frozen=True, slots=True)
class StepSpec:
    """The ``spec`` of a step row (module docstring). ``None`` means the key is absent.

    The first fields are the definition's ``Step`` in protobuf JSON form (proto field
    names; default values absent); ``on_failure`` and ``caching`` are the effective
    policies; the rest is engine state."""

    id: str | None = None
    agent: str | None = None
    skill: str | None = None
    orchestration: OrchestrationTarget | None = None
    plan: PlanTarget | None = None
    depends_on: tuple[str, ...] | None = None
    input: Any = None
    """The step's input template (``${...}`` references unresolved)."""
    checkpoint: CheckpointPolicy | None = None
    on_failure: FailurePolicy | None = None
    timeout_seconds: float | None = None
    caching: CachePolicy | None = None
    description: str | None = None
    rollback: Rollback | None = None
    bypass_cache: bool | None = None
    """Set (true) on a sub-orchestration step of a run started with ``bypass_cache``: its
    child run bypasses the cache too."""
    approved_input: Any = None
    """Input given with the approval of a ``checkpoint: before``, merged over the
    resolved input (set by ``podium_decide_approval``)."""
    checkpoint_passed: bool | None = None
    """The ``checkpoint: before`` was approved: dispatch without parking again."""
    answer: Answer | None = None
    sleep: SleepSpec | None = None
    wait_for_event: WaitForEventSpec | None = None
    wake_at: str | None = None
    """The deadline of a sleep or a wait (set by the SQL of its first claim)."""
    received_event: Mapping[str, Any] | None = None
    """The external event delivered to a wait_for_event step (set by the SQL)."""
    when: str | None = None
    """The step's condition, a CEL expression (``engine/conditions.py``)."""
    run_metadata: Any = None
    """The run's metadata, copied at StartRun when the condition reads ``run.metadata``."""
    loop: StepLoop | None = None
    loop_iteration: int | None = None
    """Iterations of a loop step completed so far (set by ``podium_iterate_step``)."""
    loop_output: Any = None
    """The output of the last completed iteration (set by ``podium_iterate_step``)."""
    for_each: str | None = None
    """Dynamic fan-out: the reference to the list of items (``engine/fanout.py``)."""
    max_parallel: int | None = None
    """Items of a ``for_each`` step running at once (the run's max_parallel caps it)."""
    budgeted: bool | None = None
    """Set (true) by ``podium_create_run`` when a budget applies to the step's run (its
    own or an ancestor's): the executor checks it before dispatch (``podium_budget_gate``)."""
    routing: Mapping[str, Any] | None = None
    """The definition's ``execution.routing`` (protobuf JSON), copied at StartRun onto its
    agent and skill steps when it is set: the executor checks the agent a skill is routed
    to against it (``engine/policies.py``)."""
    refused_agents: Sequence[str] | None = None
    """The agents offering a skill step's skill, each refused by the routing policies
    (at most 10): set by the claim in the spec it returns (never stored) when no agent
    may take the step, which the executor then fails with ``POLICY_DENIED``."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Keys this module does not know (kept as they are), and a ``caching`` that is not
    an effective policy (a run stored before the cache existed)."""

    @classmethod
    def for_step(
        cls,
        step_json: Mapping[str, Any],
        *,
        on_failure: FailurePolicy,
        caching: CachePolicy | None,
        bypass_cache: bool,
    ) -> StepSpec:
        """The spec of a new step: the definition's step in protobuf JSON form with its
        effective policies (the author's ``caching`` is replaced by the effective one,
        or dropped when the step is not cached)."""
        # Built in one call: dataclasses.replace() of a parsed spec costs more than the
        # parse itself, and StartRun builds one spec per step of the plan.
        fields = _spec_fields(step_json)
        extra = fields["extra"]
        if "caching" in extra:
            fields["extra"] = {k: v for k, v in extra.items() if k != "caching"}
        fields["on_failure"] = on_failure
        fields["caching"] = caching
        if bypass_cache:
            fields["bypass_cache"] = True
        return cls(**fields)

    @property
    def failure(self) -> FailurePolicy:
        """The failure policy (an empty one when absent)."""
        return self.on_failure if self.on_failure is not None else NO_FAILURE_POLICY

    @property
    def checkpoint_when(self) -> CheckpointWhen | None:
        return None if self.checkpoint is None else self.checkpoint.when

    def answer_for(self, attempt: int) -> Answer | None:
        """The answer attempt ``attempt`` sends to an A2A agent's question, or None."""
        answer = self.answer
        if answer is not None and answer.attempt == attempt and answer.task_id:
            return answer
        return None

    def to_json(self) -> Json:
        out: Json = {}
        _put(out, "id", self.id)
        _put(out, "agent", self.agent)
        _put(out, "skill", self.skill)
        if self.orchestration is not None:
            out["orchestration"] = self.orchestration.to_json()
        if self.plan is not None:
            out["plan"] = self.plan.to_json()
        _put(out, "depends_on", None if self.depends_on is None else list(self.depends_on))
        _put(out, "input", self.input)
        if self.checkpoint is not None:
            out["checkpoint"] = self.checkpoint.to_json()
        if self.on_failure is not None:
            out["on_failure"] = self.on_failure.to_json()
        _put(out, "timeout_seconds", self.timeout_seconds)
        if self.caching is not None:
            out["caching"] = self.caching.to_json()
        _put(out, "description", self.description)
        if self.rollback is not None:
            out["rollback"] = self.rollback.to_json()
        _put(out, "bypass_cache", self.bypass_cache)
        _put(out, "approved_input", self.approved_input)
        _put(out, "checkpoint_passed", self.checkpoint_passed)
        if self.answer is not None:
            out["answer"] = self.answer.to_json()
        if self.sleep is not None:
            out["sleep"] = self.sleep.to_json()
        if self.wait_for_event is not None:
            out["wait_for_event"] = self.wait_for_event.to_json()
        _put(out, "wake_at", self.wake_at)
        _put(out, "received_event", self.received_event)
        _put(out, "when", self.when)
        _put(out, "run_metadata", self.run_metadata)
        if self.loop is not None:
            out["loop"] = self.loop.to_json()
        _put(out, "loop_iteration", self.loop_iteration)
        _put(out, "loop_output", self.loop_output)
        _put(out, "for_each", self.for_each)
        _put(out, "max_parallel", self.max_parallel)
        _put(out, "budgeted", self.budgeted)
        _put(out, "routing", self.routing)
        _put(out, "refused_agents", self.refused_agents)
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StepSpec:
        """Parse a stored spec; cheap (it runs for every claimed step)."""
        return cls(**_spec_fields(data))


def _spec_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :class:`StepSpec` for the spec JSON ``data``."""
    get = data.get
    orchestration = get("orchestration")
    plan = get("plan")
    checkpoint = get("checkpoint")
    on_failure = get("on_failure")
    rollback = get("rollback")
    answer = get("answer")
    sleep = get("sleep")
    wait = get("wait_for_event")
    loop = get("loop")
    depends_on: Sequence[str] | None = get("depends_on")
    raw_caching = get("caching")
    caching = CachePolicy.from_json(raw_caching) if raw_caching is not None else None
    extra: Json = {}
    if not _KNOWN.issuperset(data):
        extra = {k: v for k, v in data.items() if k not in _KNOWN}
    if raw_caching is not None and caching is None:
        extra["caching"] = raw_caching
    return dict(
        id=get("id"),
        agent=get("agent"),
        skill=get("skill"),
        orchestration=(
            OrchestrationTarget.from_json(orchestration)
            if isinstance(orchestration, dict)
            else None
        ),
        plan=PlanTarget.from_json(plan) if isinstance(plan, dict) else None,
        depends_on=None if depends_on is None else tuple(depends_on),
        input=get("input"),
        checkpoint=CheckpointPolicy.from_json(checkpoint) if isinstance(checkpoint, dict) else None,
        on_failure=(FailurePolicy.from_json(on_failure) if isinstance(on_failure, dict) else None),
        timeout_seconds=get("timeout_seconds"),
        caching=caching,
        description=get("description"),
        rollback=Rollback.from_json(rollback) if isinstance(rollback, dict) else None,
        bypass_cache=get("bypass_cache"),
        approved_input=get("approved_input"),
        checkpoint_passed=get("checkpoint_passed"),
        answer=Answer.from_json(answer) if isinstance(answer, dict) else None,
        sleep=SleepSpec.from_json(sleep) if isinstance(sleep, dict) else None,
        wait_for_event=WaitForEventSpec.from_json(wait) if isinstance(wait, dict) else None,
        wake_at=get("wake_at"),
        received_event=get("received_event"),
        when=get("when"),
        run_metadata=get("run_metadata"),
        loop=StepLoop.from_json(loop) if isinstance(loop, dict) else None,
        loop_iteration=get("loop_iteration"),
        loop_output=get("loop_output"),
        for_each=get("for_each"),
        max_parallel=get("max_parallel"),
        budgeted=get("budgeted"),
        routing=get("routing"),
        refused_agents=get("refused_agents"),
        extra=extra,
    )
