//! Usage export: CSV for spreadsheets and finance, and CloudEvents-shaped
//! JSON lines that OpenMeter-style systems ingest as they are.

use bulkhead_store::StoredUsage;
use serde_json::json;
use time::format_description::well_known::Rfc3339;

pub const CSV_HEADER: &str = "seq,tenant_id,event_id,time,kind,name,input_tokens,output_tokens,cached_input_tokens,quantity,unit,cost_usd,run_id,agent_id,request_id\n";

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

/// One CSV line (with its newline).
pub fn csv_line(u: &StoredUsage) -> String {
    let e = &u.event;
    let opt = |v: Option<String>| v.unwrap_or_default();
    let fields = [
        u.seq.to_string(),
        u.tenant_id.to_string(),
        csv_field(&e.id),
        e.ts.format(&Rfc3339).unwrap_or_default(),
        e.kind.to_string(),
        csv_field(&e.name),
        e.input_tokens.to_string(),
        e.output_tokens.to_string(),
        e.cached_input_tokens.to_string(),
        e.quantity.to_string(),
        csv_field(&opt(e.unit.clone())),
        e.cost.to_string(),
        opt(e.run_id.map(|v| v.to_string())),
        opt(e.agent_id.map(|v| v.to_string())),
        csv_field(&opt(e.request_id.clone())),
    ];
    let mut line = fields.join(",");
    line.push('\n');
    line
}

/// One CloudEvents 1.0 event as a JSON line: `subject` is the tenant (the
/// metered customer), `type` names the kind of usage.
pub fn cloudevent_line(u: &StoredUsage) -> String {
    let e = &u.event;
    let event = json!({
        "specversion": "1.0",
        "id": e.id,
        "source": "bulkhead",
        "type": format!("bulkhead.usage.{}", e.kind),
        "subject": u.tenant_id.to_string(),
        "time": e.ts.format(&Rfc3339).unwrap_or_default(),
        "datacontenttype": "application/json",
        "data": {
            "kind": e.kind.as_str(),
            "name": e.name,
            "input_tokens": e.input_tokens,
            "output_tokens": e.output_tokens,
            "cached_input_tokens": e.cached_input_tokens,
            "quantity": e.quantity,
            "unit": e.unit,
            "cost_usd": e.cost,
            "run_id": e.run_id,
            "agent_id": e.agent_id,
            "request_id": e.request_id,
            "attributes": e.attributes,
        },
    });
    let mut line = event.to_string();
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_core::{Money, TenantId};
    use bulkhead_store::{UsageEvent, UsageKind};

    fn sample() -> StoredUsage {
        StoredUsage {
            seq: 7,
            tenant_id: TenantId::new(),
            event: UsageEvent {
                id: "ev,1".into(),
                ts: time::macros::datetime!(2026-11-27 10:00 UTC),
                kind: UsageKind::Llm,
                name: "gpt-4o".into(),
                input_tokens: 10,
                output_tokens: 5,
                cached_input_tokens: 0,
                quantity: 0,
                unit: None,
                cost: Money::from_nanos(75_000),
                run_id: None,
                agent_id: None,
                request_id: Some("say \"hi\"".into()),
                attributes: json!({}),
            },
        }
    }

    #[test]
    fn csv_quotes_what_needs_quoting() {
        let line = csv_line(&sample());
        assert!(line.contains(",\"ev,1\","), "{line}");
        assert!(line.contains("\"say \"\"hi\"\"\""), "{line}");
        assert!(line.contains(",0.000075,"), "{line}");
        assert_eq!(line.matches(',').count(), CSV_HEADER.matches(',').count() + 1, "one quoted comma");
    }

    #[test]
    fn cloudevents_have_the_required_attributes() {
        let v: serde_json::Value = serde_json::from_str(&cloudevent_line(&sample())).unwrap();
        for attr in ["specversion", "id", "source", "type"] {
            assert!(v[attr].is_string(), "{attr}");
        }
        assert_eq!(v["type"], "bulkhead.usage.llm");
        assert_eq!(v["data"]["cost_usd"], "0.000075");
    }
}
