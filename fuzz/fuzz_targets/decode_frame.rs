//! Arbitrary bytes through `decode_frame` (repeatedly, as a connection reads), then the
//! payload decoders (`Method::decode`, `ContentHeader::decode`, `BasicProperties::decode`)
//! directly. Nothing may panic; errors map to 501/540; whatever decodes re-encodes stably.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use pier_wire::{decode_frame, BasicProperties, ContentHeader, Frame, Method};

fn frames(data: &[u8], frame_max: u32) {
    let mut buf = BytesMut::from(data);
    loop {
        match decode_frame(&mut buf, frame_max) {
            Ok(Some(frame)) => {
                let mut out1 = BytesMut::new();
                frame.encode(&mut out1);
                assert_eq!(out1.len(), frame.encoded_size());
                let again = decode_frame(&mut out1.clone(), 0)
                    .expect("re-encoded frame decodes")
                    .expect("re-encoded frame is whole");
                let mut out2 = BytesMut::new();
                again.encode(&mut out2);
                // compared as bytes: a float in a table may be NaN
                assert_eq!(out1, out2);
                if let Frame::Header { header, .. } = &frame {
                    let _ = BasicProperties::decode(&header.raw_properties);
                }
            }
            Ok(None) => break,
            Err(e) => {
                assert!(matches!(e.reply_code(), 501 | 540), "{e:?}");
                break;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    frames(data, 0);
    frames(data, 4096);

    let bytes = Bytes::copy_from_slice(data);
    let _ = Method::decode(&bytes);
    let _ = ContentHeader::decode(&bytes);
    let _ = BasicProperties::decode(&bytes);
    // the payload of a would-be frame
    if data.len() > 8 {
        let payload = bytes.slice(7..data.len() - 1);
        if let Ok(m) = Method::decode(&payload) {
            let mut out = BytesMut::new();
            m.encode(&mut out);
            assert_eq!(out.len(), m.encoded_size());
            let _ = Method::decode(&out.freeze()).expect("re-encoded method decodes");
        }
        let _ = ContentHeader::decode(&payload);
    }
});
