"""``bench/timeline.py``'s segments of one run: consecutive clock readings, so the parts
of a step add up to the step, and every reading is used once."""

from __future__ import annotations

from typing import Any

from bench.timeline import segments


def _events(times: dict[tuple[str, str | None], float]) -> list[dict[str, Any]]:
    return [{"type": t, "step_id": s, "t": at} for (t, s), at in times.items()]


def test_segments_of_a_run_add_up() -> None:
    times: dict[tuple[str, str | None], float] = {("run.created", None): 100.002}
    receipts = {}
    clock = 100.003
    for k in range(1, 11):
        step = f"s{k}"
        times[("step.queued", step)] = clock
        times[("step.started", step)] = clock + 0.001  # the claim
        receipts[step] = clock + 0.0025  # dispatched
        times[("step.completed", step)] = clock + 0.004  # answered and recorded
        clock += 0.004
    times[("run.completed", None)] = clock
    out = segments((100.0, clock + 0.0015), _events(times), receipts)

    def ms(values: list[float]) -> list[float]:
        return [round(v, 6) for v in values]

    assert ms(out["start_to_run_created"]) == [2.0]
    assert ms(out["first_claim"]) == [1.0]
    assert ms(out["dispatch"]) == [1.5] * 10
    assert ms(out["agent_to_completed"]) == [1.5] * 10
    assert ms(out["next_claim"]) == [1.0] * 9  # the next step's queued -> started
    assert ms(out["step"]) == [4.0] * 8  # steps 2-9: dispatch + answer + next claim
    assert ms(out["completed_to_caller"]) == [1.5]
    assert ms(out["run"]) == [round(1000 * (clock + 0.0015 - 100.0), 6)]
