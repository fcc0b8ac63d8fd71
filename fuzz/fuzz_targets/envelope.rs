//! `Envelope::decode`: a Redis pub/sub payload, as the ws-server's hub receives it.
//!
//! Invariants: no panic; a decoded envelope holds a valid channel; it encodes again to a payload
//! that decodes to the same envelope and whose message part is the stored message JSON of the
//! wire contract; its trace context, if any, reads without panic; the ws-server's serialized
//! form of the message (`SharedMessage`) is that same JSON.
#![no_main]

use chat_core::channel::ChannelName;
use chat_core::envelope::Envelope;
use chat_core::message::StoredMessage;
use chat_ws_server::recent::SharedMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(envelope) = Envelope::decode(data) else {
        return;
    };
    let message = &envelope.message;
    assert_eq!(
        ChannelName::parse(message.channel.as_str()).as_ref(),
        Ok(&message.channel)
    );

    let encoded = envelope.encode();
    let again = Envelope::decode(&encoded).expect("an encoded envelope decodes");
    assert_eq!(again, envelope);
    assert_eq!(again.encode(), encoded, "encoding is stable");
    let as_message: StoredMessage =
        serde_json::from_slice(&encoded).expect("an envelope is a stored message");
    assert_eq!(&as_message, message);
    let _ = again.span_context();

    let shared = SharedMessage::new(message);
    assert_eq!(shared.seq, message.seq);
    let from_shared: StoredMessage =
        serde_json::from_str(shared.json.get()).expect("a shared message is a stored message");
    assert_eq!(&from_shared, message);
});
