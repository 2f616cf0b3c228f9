//! Recording Events about objects (scheduling, back-off, eviction, rollout steps), with
//! repeats of the same reason and message counted on one Event, as Kubernetes does.

use std::collections::HashMap;

use bramble_api::event::{Event, EventSource};
use bramble_api::service::ObjectReference;
use bramble_api::{Kind, Object};

use crate::store::{Op, Outcome, Store, Subresource};

/// Repeats remembered per recorder before the oldest are forgotten.
const REMEMBERED: usize = 4096;

/// Writes Events for one component.
pub struct EventRecorder {
    store: Store,
    component: String,
    /// (object uid, reason, message) → the Event's name and namespace.
    seen: HashMap<(String, String, String), (String, String)>,
}

fn now() -> String {
    bramble_api::time::format_rfc3339(bramble_api::time::now_secs())
}

impl EventRecorder {
    /// A recorder for `component` (e.g. `default-scheduler`).
    pub fn new(store: Store, component: &str) -> Self {
        EventRecorder {
            store,
            component: component.to_string(),
            seen: HashMap::new(),
        }
    }

    /// A new Event about `obj` (for callers that write many at once).
    pub fn event(obj: Object, type_: &str, reason: &str, message: &str, component: &str) -> Object {
        let m = obj.meta();
        let ns = if obj.kind().namespaced() {
            m.namespace.clone()
        } else {
            "default".to_string()
        };
        let mut e = Event::default();
        e.metadata.generate_name = format!("{}.", m.name);
        e.metadata.namespace = ns;
        e.involved_object = ObjectReference {
            api_version: obj.kind().api_version().into(),
            kind: obj.kind().name().into(),
            namespace: if obj.kind().namespaced() {
                m.namespace.clone()
            } else {
                String::new()
            },
            name: m.name.clone(),
            uid: m.uid.clone(),
        };
        e.reason = reason.into();
        e.message = message.into();
        e.type_ = type_.into();
        e.count = 1;
        e.first_timestamp = Some(now());
        e.last_timestamp = e.first_timestamp.clone();
        e.source = Some(EventSource {
            component: component.to_string(),
            host: String::new(),
        });
        Object::Event(e)
    }

    /// Records an event about `obj`; failures are logged, never fatal.
    pub async fn record(&mut self, obj: Object, type_: &str, reason: &str, message: &str) {
        let m = obj.meta();
        let ns = if obj.kind().namespaced() {
            m.namespace.clone()
        } else {
            "default".to_string()
        };
        let key = (m.uid.clone(), reason.to_string(), message.to_string());
        if let Some((name, ens)) = self.seen.get(&key).cloned()
            && let Some(Ok(Object::Event(mut e))) =
                self.store.get(Kind::Event, &ens, &name).map(|e| e.object())
        {
            e.count += 1;
            e.last_timestamp = Some(now());
            e.metadata.resource_version.clear();
            if self
                .store
                .write(Op::Update(Object::Event(e), Subresource::Main))
                .await
                .is_ok()
            {
                return;
            }
        }
        let e = Self::event(obj, type_, reason, message, &self.component);
        match self.store.write(Op::Create(e)).await {
            Ok(Outcome::Created(entry)) => {
                if self.seen.len() >= REMEMBERED {
                    self.seen.clear();
                }
                self.seen.insert(key, (entry.name.clone(), ns));
            }
            Ok(_) => {}
            Err(err) => tracing::debug!(error = %err, reason, "cannot record an event"),
        }
    }
}
