"""The event builder of ``GET /jobs/{id}/events``: ids only grow, resume skips what was seen."""

from __future__ import annotations

from service.events import Cursor, EventBuilder, Snapshot


def job(status: str, epoch: int = 0, batch: int = 0, batches: int = 0, attempt: int = 1) -> dict:
    terminal = status in ("succeeded", "failed", "cancelled")
    progress = {"epoch": epoch, "total": 3, "batch": batch, "batches": batches}
    return {"id": "job_x", "status": status, "is_terminal": terminal, "attempt": attempt,
            "progress": progress}  # fmt: skip


def row(epoch: int) -> dict:
    return {"epoch": epoch, "test_top1": 10.0 * epoch}


LIFE = [
    Snapshot(job("queued")),
    Snapshot(job("queued")),  # nothing new
    Snapshot(job("running")),
    Snapshot(job("running", 0, 4, 10)),
    Snapshot(job("running", 0, 4, 10)),  # nothing new
    Snapshot(job("running", 1, 0, 10), [row(1)]),
    Snapshot(job("running", 2, 3, 10), [row(2)]),
    Snapshot(job("cancelling", 2, 5, 10)),
    Snapshot(job("cancelled", 2, 5, 10)),
]


def run(builder: EventBuilder, snapshots: list[Snapshot]) -> list[tuple[str, str]]:
    return [(e.event, str(e.id)) for s in snapshots for e in builder.advance(s)]


def test_a_job_life_as_events_with_growing_ids():
    builder = EventBuilder()
    events = run(builder, LIFE)
    assert events == [
        ("state", "1.0.1.0"), ("state", "1.0.3.0"), ("progress", "1.0.3.4"),
        ("epoch", "1.1.0.0"), ("epoch", "1.2.0.0"), ("progress", "1.2.3.3"),
        ("state", "1.2.4.0"), ("progress", "1.2.4.5"), ("state", "1.2.5.0"),
    ]  # fmt: skip
    ids = [Cursor.parse(i) for _, i in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert builder.finished


def test_resume_sends_only_what_the_client_has_not_seen():
    # The client saw epoch 1 (an epoch event: it does not know the status since).
    builder = EventBuilder(Cursor.parse("1.1.0.0"))
    final = Snapshot(job("succeeded", 3, 0, 10), [row(2), row(3)])  # rows after epoch 1
    assert run(builder, [final]) == [("epoch", "1.2.0.0"), ("epoch", "1.3.0.0"),
                                     ("state", "1.3.5.0")]  # fmt: skip
    # It saw a progress event while running: no repeated state, newer progress only.
    builder = EventBuilder(Cursor.parse("1.2.3.3"))
    assert run(builder, [Snapshot(job("running", 2, 3, 10))]) == []
    assert run(builder, [Snapshot(job("running", 2, 7, 10))]) == [("progress", "1.2.3.7")]
    # It saw the end: nothing more, and the stream ends.
    builder = EventBuilder(Cursor.parse("1.3.5.0"))
    assert run(builder, [Snapshot(job("succeeded", 3, 0, 10))]) == [] and builder.finished


def test_a_requeued_attempt_continues_the_order():
    builder = EventBuilder(Cursor.parse("1.2.3.9"))
    events = run(builder, [Snapshot(job("queued", 2, 9, 10, attempt=2)),
                           Snapshot(job("running", 2, 2, 10, attempt=2))])  # fmt: skip
    assert events == [("state", "2.2.1.0"), ("state", "2.2.3.0"), ("progress", "2.2.3.2")]


def test_malformed_last_event_id_starts_over_and_a_gone_job_ends():
    assert Cursor.parse("abc") is None and Cursor.parse("1.2.3") is None
    assert Cursor.parse(None) is None and Cursor.parse(" 1.2.3.4 ") == Cursor(1, 2, 3, 4)
    builder = EventBuilder()
    assert builder.advance(Snapshot(None)) == [] and builder.finished


def test_wire_format():
    builder = EventBuilder()
    (event,) = builder.advance(Snapshot(job("queued")))
    text = event.encode()
    assert text.startswith("id: 1.0.1.0\nevent: state\ndata: {") and text.endswith("}\n\n")
    assert "\n" not in text.split("data: ")[1].rstrip("\n")
