//! Any byte string, as each message type, whole-frame and incrementally: an error or a
//! message that re-encodes to the same frame — never a panic, never a huge allocation.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sentry_proto::*;

fn check<T: Message + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(m) = decode_frame::<T>(data) {
        let again = encode_frame(&m).expect("a decoded message re-encodes");
        assert_eq!(again, data, "encoding is canonical");
    }
    let mut fb = FrameBuf::<T>::new();
    let mut rest = data;
    while !rest.is_empty() {
        let Ok(want) = fb.wanted() else { break };
        let n = want.min(rest.len());
        if fb.feed(&rest[..n]).is_err() {
            break;
        }
        rest = &rest[n..];
        if let Some(Err(_)) = fb.next_message() {
            break;
        }
    }
    let _ = read_frame::<T, _>(&mut std::io::Cursor::new(data));
}

fuzz_target!(|data: &[u8]| {
    check::<SensorFrame>(data);
    check::<EnforcerFrame>(data);
    check::<ControlRequest>(data);
    check::<ControlResponse>(data);
    if let Ok(SensorFrame::Block(b)) = decode_frame::<SensorFrame>(data) {
        let _ = b.validate(1_700_000_000_000);
    }
    // A fleet block's metadata is LAPI input relayed by the bridge: its checks see
    // whatever decodes.
    if let Ok(ControlRequest::BlockWith { meta, .. }) = decode_frame::<ControlRequest>(data) {
        let _ = meta.validate();
    }
});
