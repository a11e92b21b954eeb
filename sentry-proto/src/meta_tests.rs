//! [`BlockMeta::validate`]: every field a LAPI claims is bounded and printable, and a
//! bad one is refused by name, never shortened.

use crate::{BlockMeta, FieldError, MAX_LAPI_ID, MAX_MACHINE_LEN, MAX_SCENARIO_LEN};

fn meta() -> BlockMeta {
    BlockMeta {
        scenario: Some("crowdsecurity/ssh-bf".into()),
        decision_id: Some(41),
        alert_id: Some(17),
        machine: Some("hostA-7f3e".into()),
    }
}

fn refused(m: BlockMeta) -> String {
    match m.validate() {
        Err(e @ FieldError::Meta(_)) => e.to_string(),
        other => panic!("{m:?}: expected a Meta error, got {other:?}"),
    }
}

#[test]
fn good_metadata_passes() {
    meta().validate().unwrap();
    BlockMeta::default().validate().unwrap();
    assert!(BlockMeta::default().is_empty() && !meta().is_empty());
    // A manual decision's scenario is its reason, with spaces and quotes.
    BlockMeta {
        scenario: Some("manual 'ban' from 'm1'".into()),
        ..BlockMeta::default()
    }
    .validate()
    .unwrap();
    BlockMeta {
        scenario: Some("s".repeat(MAX_SCENARIO_LEN)),
        machine: Some("m".repeat(MAX_MACHINE_LEN)),
        decision_id: Some(MAX_LAPI_ID),
        alert_id: Some(1),
    }
    .validate()
    .unwrap();
}

#[test]
fn bad_fields_are_refused_by_name() {
    for bad in [
        String::new(),
        "s".repeat(MAX_SCENARIO_LEN + 1),
        "a\nattackalert: forged".into(),
        "tab\there".into(),
        "esc\x1b[31m".into(),
        "del\x7f".into(),
        "naïve".into(),
        " leading".into(),
        "trailing ".into(),
    ] {
        let e = refused(BlockMeta {
            scenario: Some(bad.clone()),
            ..meta()
        });
        assert!(e.contains("scenario"), "{bad:?}: {e}");
    }
    for bad in [
        String::new(),
        "m".repeat(MAX_MACHINE_LEN + 1),
        "host a".into(),
        "host\r".into(),
        "hôte".into(),
    ] {
        let e = refused(BlockMeta {
            machine: Some(bad.clone()),
            ..meta()
        });
        assert!(e.contains("machine"), "{bad:?}: {e}");
    }
    for id in [0, MAX_LAPI_ID + 1, u64::MAX] {
        refused(BlockMeta {
            decision_id: Some(id),
            ..meta()
        });
        refused(BlockMeta {
            alert_id: Some(id),
            ..meta()
        });
    }
}
