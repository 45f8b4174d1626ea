//! Property tests of [`super::channel_key`]: whatever names clients choose (control characters,
//! the key mark itself, names that look like private keys), a public channel and a private one
//! never share a key, and every key gives its name back.

use proptest::prelude::*;

use super::{channel_key, channel_name};

/// Names built from the characters that matter here, plus anything else.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(
            prop_oneof![
                Just("\u{1}".to_owned()),
                Just("private:".to_owned()),
                Just("public:".to_owned()),
                Just("room".to_owned()),
                any::<char>().prop_map(String::from),
            ],
            0..6
        )
        .prop_map(|parts| parts.concat()),
        any::<String>(),
    ]
}

proptest! {
    #[test]
    fn keys_are_distinct_and_give_their_name_back(
        a in name(), b in name(), pa in any::<bool>(), pb in any::<bool>()
    ) {
        let (ka, kb) = (channel_key(&a, pa), channel_key(&b, pb));
        prop_assert_eq!(channel_name(&ka), a.as_str());
        prop_assert_eq!(ka == kb, a == b && pa == pb);
    }
}

#[test]
fn a_public_name_shaped_like_a_private_key_stays_public() {
    let forged = channel_key("room", true).into_owned();
    assert_ne!(channel_key(&forged, false), channel_key("room", true));
    assert_eq!(channel_key("room", false), "room");
}
