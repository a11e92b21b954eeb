//! `sentryctl ignore`'s editor on arbitrary files and entries. The first line of the
//! input is the entry, the rest the file. Never a panic, and:
//! * `add` changes nothing or appends exactly one marked line (after a newline the file
//!   lacked), keeping every byte before it;
//! * `remove` after a changing `add` gives back the file as it was (plus that newline);
//! * `remove` only ever drops whole lines: what it keeps is the file's lines in order;
//! * `list` names only lines that exist.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sentry_client::ignorefile::{add, list, remove, MARKER};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (entry, text) = s.split_once('\n').unwrap_or((s, ""));
    let path = Path::new("fuzz.ignore");
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for l in list(text) {
        assert!(l.line >= 1 && l.line <= lines.len());
        assert!(lines[l.line - 1].contains(l.entry.as_str()));
    }
    if let Ok(r) = remove(text, entry, path) {
        let mut kept = lines.iter();
        for l in r.text.split_inclusive('\n') {
            assert!(kept.any(|k| *k == l), "remove changed a line: {l:?}");
        }
        assert_eq!(r.changed == 0, r.text == text);
    }
    let Ok(a) = add(text, entry, "2026-12-07", path) else {
        return;
    };
    if a.changed == 0 {
        assert_eq!(a.text, text);
        return;
    }
    let mut base = text.to_string();
    if !base.is_empty() && !base.ends_with('\n') {
        base.push('\n');
    }
    let tail = a.text.strip_prefix(base.as_str()).expect("add kept the file");
    assert_eq!(tail, format!("{entry} # {MARKER} 2026-12-07\n"));
    let r = remove(&a.text, entry, path).expect("what add wrote, remove takes back");
    assert_eq!(r.text, base);
});
