//! What caused a change: the document a membership log row's `cause` and a rollout-target event's carry —
//! an event (its id and position), a control-log entry, or the clock (a time flip).

use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::rules::time::format_millis;
use crate::rules::EpochMillis;
use crate::store::control::Positioned;

/// A cause's JSON document (a log row's `cause`, a rollout-target event's): rendered once per event or
/// control entry and shared by every row it causes, so no row builds or serializes a document of its own.
pub(super) type Document = Arc<RawValue>;

/// What caused a change, as a batch carries it. An event's document is rendered only when a row or a
/// rollout-target event needs it ([`crate::worker::compute::work::Work::document`]): most events — a
/// fleet's heartbeats — change no membership and no target, and need none.
#[derive(Clone, Debug)]
pub(super) enum Cause {
    Rendered(Document),
    /// The event of the batch's record at this index.
    Record(usize),
}

/// The causes' documents, as stored: `{"type": "event", "eventId", "partition", "offset"}`,
/// `{"type": "control", "controlId", "kind"}` or `{"type": "timer", "at"}`.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum CauseDoc<'a> {
    Event {
        #[serde(rename = "eventId")]
        event_id: &'a str,
        partition: i32,
        offset: i64,
    },
    Control {
        #[serde(rename = "controlId")]
        control_id: i64,
        kind: &'a str,
    },
    Timer {
        at: &'a str,
    },
}

impl CauseDoc<'_> {
    fn render(&self) -> Document {
        // Strings and integers only: serializing cannot fail.
        let raw = serde_json::value::to_raw_value(self).expect("a cause document serializes");
        Arc::from(raw)
    }
}

/// The cause of changes a control-log entry made.
pub(super) fn control_cause(entry: &Positioned) -> Cause {
    Cause::Rendered(
        CauseDoc::Control {
            control_id: entry.id,
            kind: entry.entry.kind(),
        }
        .render(),
    )
}

/// The cause of changes an event made: its id and position.
pub(super) fn event_cause(event_id: &str, partition: i32, offset: i64) -> Document {
    CauseDoc::Event {
        event_id,
        partition,
        offset,
    }
    .render()
}

/// The cause of changes made by the clock alone, at `now`.
pub(super) fn timer_cause(now: EpochMillis) -> Document {
    CauseDoc::Timer {
        at: &format_millis(now),
    }
    .render()
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::firmware::Target;

    #[test]
    fn causes_render_to_the_stored_documents_once_with_their_text_escaped() {
        let event = CauseDoc::Event {
            event_id: "e-\"1\"",
            partition: 3,
            offset: 42,
        }
        .render();
        let parsed: Value = serde_json::from_str(event.get()).unwrap();
        assert_eq!(
            parsed,
            json!({"type": "event", "eventId": "e-\"1\"", "partition": 3, "offset": 42})
        );
        let control = CauseDoc::Control {
            control_id: 7,
            kind: "pinned",
        }
        .render();
        assert_eq!(
            serde_json::from_str::<Value>(control.get()).unwrap(),
            json!({"type": "control", "controlId": 7, "kind": "pinned"})
        );
        let timer = CauseDoc::Timer {
            at: "2026-01-01T00:00:00.000Z",
        }
        .render();
        assert_eq!(
            serde_json::from_str::<Value>(timer.get()).unwrap(),
            json!({"type": "timer", "at": "2026-01-01T00:00:00.000Z"})
        );
        // A rollout-target event embeds the same document.
        let rollout = crate::firmware::rollout_event(
            "o",
            "d",
            1,
            &Target::none(),
            &Target::none(),
            &control,
            "t",
        );
        assert_eq!(
            rollout["data"]["cause"],
            json!({"type": "control", "controlId": 7, "kind": "pinned"})
        );
    }
}
