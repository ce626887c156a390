//! What a webhook means: a Messaging webhook (SMS, MMS, WhatsApp) is a direct message from its
//! sender; a Conversations `onMessageAdded` webhook is a message in a group conversation.

use serde_json::Value;

use super::sender::{Bsuid, Sender};
use super::Params;
use crate::phone::E164;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dm,
    Group,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Dm => "dm",
            Kind::Group => "group",
        }
    }
}

/// What a message carries, as the downstream worker needs to know before it opens the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentType {
    Text,
    Image,
    Audio,
    Video,
    Document,
    Contact,
    Location,
    /// Media of more than one kind in one message.
    Mixed,
    /// No body, no media: a WhatsApp reaction, for one.
    Empty,
}

impl ContentType {
    pub fn as_str(self) -> &'static str {
        match self {
            ContentType::Text => "text",
            ContentType::Image => "image",
            ContentType::Audio => "audio",
            ContentType::Video => "video",
            ContentType::Document => "document",
            ContentType::Contact => "contact",
            ContentType::Location => "location",
            ContentType::Mixed => "mixed",
            ContentType::Empty => "empty",
        }
    }

    fn of_mime(mime: &str) -> Self {
        let mime = mime.trim().to_ascii_lowercase();
        match mime.split('/').next().unwrap_or_default() {
            "image" => ContentType::Image,
            "audio" => ContentType::Audio,
            "video" => ContentType::Video,
            _ if mime.contains("vcard") => ContentType::Contact,
            _ => ContentType::Document,
        }
    }

    fn of_media(mimes: impl IntoIterator<Item = ContentType>) -> Option<Self> {
        mimes.into_iter().reduce(|a, b| if a == b { a } else { ContentType::Mixed })
    }
}

/// An inbound message, as [`parse`] makes it from a webhook it has checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundMessage {
    pub kind: Kind,
    pub message_sid: String,
    /// Every address the message carries for its sender.
    pub sender: Sender,
    pub channel: Channel,
    pub first_name: Option<String>,
    pub content_type: ContentType,
}

/// Which thread a message belongs to, as far as the webhook tells: the database completes a
/// direct message's channel with its sender's user key, so that one person's thread is one
/// channel whichever address WhatsApp sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Channel {
    /// A direct message on the channel `From` names by its prefix: `whatsapp:`, or empty for SMS.
    Direct { prefix: String },
    /// A message in a Conversation: its `ConversationSid`.
    Conversation(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Webhook {
    Message(InboundMessage),
    /// A webhook that is genuine but not an inbound message (another Conversations event, a
    /// delivery status callback); acknowledged and not stored.
    Ignored {
        event: String,
    },
}

/// Why a signed webhook cannot become a job. Such a message is dead-lettered, never dropped. What
/// it displays is fit for a log line: no value a client sent but a param's name. [`Unusable::detail`]
/// adds the offending value, clipped, for the dead letter.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum Unusable {
    #[error("no MessageSid: the webhook has no message id")]
    MissingMessageSid,
    /// Twilio's SIDs have one shape. Since the signature joins keys and values with no separator,
    /// a boundary moved in a captured request (`MessageSid=SM…NumMedia0`) keeps it valid: a
    /// value of another shape was not written by Twilio.
    #[error("{field} is not a Twilio SID ({expected})")]
    MalformedSid { field: &'static str, expected: &'static str, value: String },
    /// PostgreSQL's text and jsonb cannot hold U+0000.
    #[error("param {0:?} holds a NUL character, which the database cannot store")]
    NulCharacter(String),
    #[error("no sender: {0} is missing")]
    MissingSender(&'static str),
    #[error("{field} is neither a phone number nor a WhatsApp user id")]
    MalformedSender { field: &'static str, value: String },
    #[error("no ConversationSid on a Conversations webhook")]
    MissingConversationSid,
}

impl Unusable {
    /// The reason with the value at fault, clipped: for the dead letter's `error`, which sits
    /// beside the payload that holds the value whole. Never for a log line.
    pub fn detail(&self) -> String {
        match self {
            Unusable::MalformedSid { value, .. } | Unusable::MalformedSender { value, .. } => {
                format!("{self}: {value:?}")
            }
            _ => self.to_string(),
        }
    }
}

/// The message id under any of the names Twilio has given it, if it has a SID's shape: safe to
/// log, to index and to key a dead letter by.
pub fn message_sid(params: &Params) -> Option<&str> {
    ["MessageSid", "SmsMessageSid", "SmsSid"].iter().find_map(|k| params.non_blank(k)).filter(|v| is_sid(v, &[]))
}

/// Two capital letters (the kind, one of `prefixes` when any are given) and 32 lowercase hex
/// digits: `SM…`, `MM…`, `IM…`, `AC…`, `CH…`.
pub fn is_sid(value: &str, prefixes: &[&str]) -> bool {
    let bytes = value.as_bytes();
    bytes.len() == 34
        && bytes[..2].iter().all(u8::is_ascii_uppercase)
        && bytes[2..].iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        && (prefixes.is_empty() || prefixes.iter().any(|p| value.starts_with(p)))
}

/// The value of `field`, which must be a SID of one of `prefixes`.
fn sid<'a>(
    params: &'a Params,
    field: &'static str,
    prefixes: &[&str],
    expected: &'static str,
) -> Result<Option<&'a str>, Unusable> {
    match params.non_blank(field) {
        None => Ok(None),
        Some(value) if is_sid(value, prefixes) => Ok(Some(value)),
        Some(value) => Err(Unusable::MalformedSid { field, expected, value: clip(value) }),
    }
}

/// At most 64 characters of a value, for an error that is logged and stored.
fn clip(value: &str) -> String {
    crate::text::clip(value, 64).to_owned()
}

pub fn parse(params: &Params) -> Result<Webhook, Unusable> {
    let webhook = match params.non_blank("EventType") {
        Some("onMessageAdded") => Webhook::Message(parse_conversations(params)?),
        Some(event) => return Ok(Webhook::Ignored { event: clip(event) }),
        None => parse_messaging(params)?,
    };
    if let Some((key, _)) = params.pairs().iter().find(|(k, v)| k.contains('\0') || v.contains('\0')) {
        return Err(Unusable::NulCharacter(clip(&key.replace('\0', "\\0"))));
    }
    Ok(webhook)
}

fn parse_messaging(params: &Params) -> Result<Webhook, Unusable> {
    // A delivery status callback pointed here by mistake is genuine but carries no inbound message.
    if let Some(status) = params.non_blank("MessageStatus").or_else(|| params.non_blank("SmsStatus")) {
        if !status.eq_ignore_ascii_case("received") {
            return Ok(Webhook::Ignored { event: format!("message status {}", clip(status)) });
        }
    }
    let any_message_sid = ["MessageSid", "SmsMessageSid", "SmsSid"].iter().find_map(|k| params.non_blank(k));
    // A Voice webhook pointed at this URL by mistake: a call, not a message.
    if any_message_sid.is_none() && params.non_blank("CallSid").is_some() {
        return Ok(Webhook::Ignored { event: "voice call".into() });
    }
    let message_sid = match any_message_sid {
        None => return Err(Unusable::MissingMessageSid),
        Some(sid) if is_sid(sid, &["SM", "MM"]) => sid,
        Some(sid) => {
            return Err(Unusable::MalformedSid { field: "MessageSid", expected: "SM or MM", value: clip(sid) })
        }
    };
    // Not kept (the payload has it), but checked: a spliced request can move a boundary into it.
    sid(params, "AccountSid", &["AC"], "AC")?;
    let from = params.non_blank("From").ok_or(Unusable::MissingSender("From"))?;
    // `From` is the phone while WhatsApp shares it, else the BSUID; `ExternalUserId` carries the
    // BSUID beside the phone, and `ParentExternalUserId` a portfolio's parent id.
    let sender = match (E164::parse_address(from), Bsuid::parse(from).filter(|_| from.starts_with("whatsapp:"))) {
        (Some(phone), _) => Sender::phone(phone),
        (None, Some(bsuid)) if !bsuid.is_parent() => Sender::bsuid(bsuid),
        _ => return Err(Unusable::MalformedSender { field: "From", value: clip(from) }),
    };
    let sender = match side_id(params, "ExternalUserId") {
        Some(bsuid) if !bsuid.is_parent() => sender.with_bsuid(bsuid),
        Some(_) => {
            tracing::warn!(field = "ExternalUserId", "a parent id where the user's own id goes; ignored");
            sender
        }
        None => sender,
    };
    let sender = match side_id(params, "ParentExternalUserId") {
        Some(parent) => sender.with_parent(parent),
        None => sender,
    };
    let prefix = from.split_once(':').map_or("", |(channel, _)| channel);
    Ok(Webhook::Message(InboundMessage {
        kind: Kind::Dm,
        message_sid: message_sid.to_owned(),
        channel: Channel::Direct { prefix: if prefix.is_empty() { String::new() } else { format!("{prefix}:") } },
        sender,
        first_name: params.non_blank("ProfileName").map(str::to_owned),
        content_type: messaging_content(params),
    }))
}

/// A BSUID carried beside `From`. One that is malformed costs nothing: the message goes on with
/// `From` (the payload keeps the value as sent), and the log says which param, never its value.
fn side_id(params: &Params, field: &'static str) -> Option<Bsuid> {
    let value = params.non_blank(field)?;
    let id = Bsuid::parse(value);
    if id.is_none() {
        tracing::warn!(field, chars = value.chars().count(), "not a WhatsApp user id; going on with From");
        tracing::debug!(field, value = clip(value), "the malformed id");
    }
    id
}

fn messaging_content(params: &Params) -> ContentType {
    if params.non_blank("Latitude").is_some() {
        return ContentType::Location;
    }
    let count: usize = params.non_blank("NumMedia").and_then(|n| n.parse().ok()).unwrap_or(0);
    // The kinds Twilio named; a media item without a content type says nothing of its kind.
    let named: Vec<ContentType> = (0..count.min(10))
        .filter_map(|i| params.non_blank(&format!("MediaContentType{i}")).map(ContentType::of_mime))
        .collect();
    match ContentType::of_media(named) {
        Some(kind) => kind,
        None if count > 0 => ContentType::Document,
        None => text_or_empty(params),
    }
}

fn parse_conversations(params: &Params) -> Result<InboundMessage, Unusable> {
    let message_sid = sid(params, "MessageSid", &["IM"], "IM")?.ok_or(Unusable::MissingMessageSid)?;
    let conversation = sid(params, "ConversationSid", &["CH"], "CH")?.ok_or(Unusable::MissingConversationSid)?;
    // Not kept (the payload has it), but checked: a spliced request can move a boundary into it.
    sid(params, "AccountSid", &["AC"], "AC")?;
    let author = params.non_blank("Author").ok_or(Unusable::MissingSender("Author"))?;
    let sender = conversations_author(author)?;
    Ok(InboundMessage {
        kind: Kind::Group,
        message_sid: message_sid.to_owned(),
        channel: Channel::Conversation(conversation.to_owned()),
        sender,
        first_name: None,
        content_type: conversations_content(params),
    })
}

/// A Conversations `Author`: a phone (with or without its channel's prefix), a WhatsApp address
/// (`whatsapp:US.…`), `system` (Twilio's own messages: a job with no user, which a bot can skip),
/// or a chat identity from the Conversations SDKs (`ada.lovelace`, an e-mail address), which is
/// kept exactly, whatever it holds.
fn conversations_author(author: &str) -> Result<Sender, Unusable> {
    if author == "system" {
        return Ok(Sender::system());
    }
    if let Some(phone) = E164::parse_address(author) {
        return Ok(Sender::phone(phone));
    }
    if author.starts_with("whatsapp:") {
        return match Bsuid::parse(author) {
            Some(bsuid) if !bsuid.is_parent() => Ok(Sender::bsuid(bsuid)),
            _ => Err(Unusable::MalformedSender { field: "Author", value: clip(author) }),
        };
    }
    Ok(Sender::chat(author))
}

fn conversations_content(params: &Params) -> ContentType {
    // `Media` is a JSON array of {Sid, ContentType, Filename, Size}; one item alone is read too.
    let media = match params.non_blank("Media").and_then(|m| serde_json::from_str::<Value>(m).ok()) {
        Some(Value::Array(items)) => items,
        Some(item @ Value::Object(_)) => vec![item],
        _ => Vec::new(),
    };
    let kinds = media
        .iter()
        .map(|m| m.get("ContentType").and_then(Value::as_str).map_or(ContentType::Document, ContentType::of_mime));
    ContentType::of_media(kinds).unwrap_or_else(|| text_or_empty(params))
}

fn text_or_empty(params: &Params) -> ContentType {
    if params.non_blank("Body").is_some() || params.non_blank("ButtonText").is_some() {
        ContentType::Text
    } else {
        ContentType::Empty
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(pairs: &[(&str, &str)]) -> InboundMessage {
        match parse(&Params::from_pairs(pairs.iter().copied())).unwrap() {
            Webhook::Message(m) => m,
            other => panic!("not a message: {other:?}"),
        }
    }

    #[test]
    fn an_sms_is_a_dm_from_its_sender() {
        let m = message(&[("MessageSid", SM), ("From", "+14155550100"), ("To", "+14155550199"), ("Body", "hi")]);
        assert_eq!(m.kind, Kind::Dm);
        assert_eq!(m.sender, Sender::phone(E164::parse_address("+14155550100").unwrap()));
        assert_eq!(m.channel, Channel::Direct { prefix: String::new() });
        assert_eq!(m.content_type, ContentType::Text);
        assert_eq!(m.first_name, None);
    }

    #[test]
    fn a_whatsapp_dm_strips_the_prefix_and_names_the_user() {
        let m = message(&[
            ("MessageSid", "SM00000000000000000000000000000002"),
            ("From", "whatsapp:+14155550100"),
            ("ProfileName", "Ada"),
            ("WaId", "14155550100"),
            ("Body", "hello"),
        ]);
        assert_eq!(m.sender.phone_number().unwrap().as_str(), "+14155550100");
        assert_eq!(m.channel, Channel::Direct { prefix: "whatsapp:".into() });
        assert_eq!(m.first_name.as_deref(), Some("Ada"));
    }

    #[test]
    fn content_type_follows_media_and_location() {
        let mms = |types: &[&str]| {
            let mut pairs = vec![
                ("MessageSid".to_string(), "MM00000000000000000000000000000001".to_string()),
                ("From".into(), "+14155550100".into()),
            ];
            pairs.push(("NumMedia".into(), types.len().to_string()));
            for (i, t) in types.iter().enumerate() {
                pairs.push((format!("MediaContentType{i}"), t.to_string()));
            }
            match parse(&Params::from_pairs(pairs)).unwrap() {
                Webhook::Message(m) => m.content_type,
                _ => unreachable!(),
            }
        };
        assert_eq!(mms(&["image/jpeg", "image/png"]), ContentType::Image);
        assert_eq!(mms(&["image/jpeg", "audio/ogg"]), ContentType::Mixed);
        assert_eq!(mms(&["application/pdf"]), ContentType::Document);
        assert_eq!(mms(&["text/vcard"]), ContentType::Contact);
        assert_eq!(mms(&["video/mp4"]), ContentType::Video);
        let loc = message(&[("MessageSid", SM), ("From", "+14155550100"), ("Latitude", "1.5"), ("Longitude", "2")]);
        assert_eq!(loc.content_type, ContentType::Location);
        let empty =
            message(&[("MessageSid", "SM00000000000000000000000000000004"), ("From", "+14155550100"), ("Body", "")]);
        assert_eq!(empty.content_type, ContentType::Empty);
    }

    #[test]
    fn a_conversations_message_is_a_group_message_in_its_conversation() {
        let m = group_with_media(r#"[{"Sid":"ME1","ContentType":"audio/ogg","Filename":"a.ogg","Size":10}]"#);
        assert_eq!(m.kind, Kind::Group);
        assert_eq!(m.channel, Channel::Conversation(CH.into()));
        assert_eq!(m.sender.phone_number().unwrap().as_str(), "+447700900123");
        assert_eq!(m.content_type, ContentType::Audio);
    }

    #[test]
    fn other_conversations_events_and_status_callbacks_are_ignored() {
        let p = Params::from_pairs([
            ("EventType", "onConversationAdded"),
            ("ConversationSid", "CH00000000000000000000000000000001"),
        ]);
        assert_eq!(parse(&p).unwrap(), Webhook::Ignored { event: "onConversationAdded".into() });
        let p = Params::from_pairs([
            ("MessageSid", "SM00000000000000000000000000000001"),
            ("From", "+14155550100"),
            ("MessageStatus", "delivered"),
        ]);
        assert!(matches!(parse(&p).unwrap(), Webhook::Ignored { .. }));
    }

    #[test]
    fn a_message_without_a_usable_sender_is_unusable() {
        let p = Params::from_pairs([("MessageSid", "SM00000000000000000000000000000001"), ("Body", "who am I")]);
        assert_eq!(parse(&p), Err(Unusable::MissingSender("From")));
        let p = Params::from_pairs([
            ("EventType", "onMessageAdded"),
            ("ConversationSid", "CH00000000000000000000000000000001"),
            ("MessageSid", "IM00000000000000000000000000000001"),
            ("Author", "whatsapp:not-an-id"),
        ]);
        assert!(matches!(parse(&p), Err(Unusable::MalformedSender { field: "Author", .. })));
        for from in ["alice", "whatsapp:US.", "whatsapp:US.ENT.123", "US.123", "+1 415 555 0100"] {
            let p = Params::from_pairs([("MessageSid", SM), ("From", from)]);
            assert!(matches!(parse(&p), Err(Unusable::MalformedSender { field: "From", .. })), "{from}");
        }
        let p = Params::from_pairs([("From", "+14155550100")]);
        assert!(matches!(parse(&p), Err(Unusable::MissingMessageSid)));
    }

    #[test]
    fn a_whatsapp_sender_without_a_phone_is_known_by_their_bsuid() {
        let m = message(&[("MessageSid", SM), ("From", "whatsapp:US.13491208655302741918"), ("ProfileName", "Ada")]);
        assert_eq!(m.sender.business_id().unwrap().as_str(), "US.13491208655302741918");
        assert_eq!(m.sender.phone_number(), None);
        assert_eq!(m.channel, Channel::Direct { prefix: "whatsapp:".into() });
        assert_eq!(m.first_name.as_deref(), Some("Ada"));
    }

    #[test]
    fn a_phone_and_a_bsuid_in_one_request_are_one_sender() {
        let m = message(&[
            ("MessageSid", SM),
            ("From", "whatsapp:+14155550100"),
            ("ExternalUserId", "whatsapp:US.1349"),
            ("ParentExternalUserId", "whatsapp:US.ENT.77"),
        ]);
        assert_eq!(m.sender.phone_number().unwrap().as_str(), "+14155550100");
        assert_eq!(m.sender.business_id().unwrap().as_str(), "US.1349");
        assert_eq!(m.sender.parent_id().unwrap().as_str(), "US.ENT.77");
    }

    #[test]
    fn a_malformed_external_user_id_costs_nothing_but_itself() {
        for bad in ["whatsapp:garbage", &"x".repeat(100_000), "whatsapp:US.ENT.1"] {
            let m = message(&[("MessageSid", SM), ("From", "whatsapp:+14155550100"), ("ExternalUserId", bad)]);
            assert_eq!(m.sender, Sender::phone(E164::parse_address("+14155550100").unwrap()), "{bad}");
        }
        let m = message(&[("MessageSid", SM), ("From", "+14155550100"), ("ParentExternalUserId", "nope")]);
        assert_eq!(m.sender.parent_id(), None);
    }

    #[test]
    fn conversations_authors_are_phones_bsuids_chat_identities_or_the_system() {
        let author = |author: &str| {
            message(&[
                ("EventType", "onMessageAdded"),
                ("ConversationSid", CH),
                ("MessageSid", "IM00000000000000000000000000000001"),
                ("Author", author),
            ])
            .sender
        };
        assert_eq!(author("+447700900123").phone_number().unwrap().as_str(), "+447700900123");
        assert_eq!(author("sms:+447700900123").phone_number().unwrap().as_str(), "+447700900123");
        assert_eq!(author("whatsapp:US.42").business_id().unwrap().as_str(), "US.42");
        assert_eq!(author("ada.lovelace").chat_identity(), Some("ada.lovelace"));
        assert_eq!(author("ada@example.com").chat_identity(), Some("ada@example.com"));
        let long = "é".repeat(50_000);
        assert_eq!(author(&long).chat_identity(), Some(long.as_str()), "kept exactly, whatever its length");
        assert!(author("system").is_system());
    }

    const SM: &str = "SM0123456789abcdef0123456789abcdef";
    const CH: &str = "CH0123456789abcdef0123456789abcdef";

    /// A Conversations message from a WhatsApp user with `media` (a JSON string) and no body.
    fn group_with_media(media: &str) -> InboundMessage {
        message(&[
            ("EventType", "onMessageAdded"),
            ("ConversationSid", CH),
            ("MessageSid", "IM0123456789abcdef0123456789abcdef"),
            ("Author", "whatsapp:+447700900123"),
            ("Body", ""),
            ("Media", media),
        ])
    }

    #[test]
    fn only_a_sid_of_twilios_shape_is_a_message_id() {
        for (field, value) in [
            ("MessageSid", format!("{SM}NumMedia0")),
            ("MessageSid", "SM0123456789ABCDEF0123456789ABCDEF".to_owned()),
            ("MessageSid", "XX0123456789abcdef0123456789abcdef".to_owned()),
            ("MessageSid", "x".repeat(10_000)),
            ("AccountSid", "AC123".to_owned()),
        ] {
            let mut pairs = vec![("MessageSid".to_owned(), SM.to_owned()), ("From".into(), "+14155550100".into())];
            pairs.retain(|(k, _)| k != field);
            pairs.push((field.to_owned(), value.clone()));
            match parse(&Params::from_pairs(pairs)) {
                Err(Unusable::MalformedSid { field: f, value: shown, .. }) => {
                    assert_eq!(f, field);
                    assert!(shown.chars().count() <= 65, "the error carries {} characters", shown.len());
                }
                other => panic!("{field}={value:.40}: {other:?}"),
            }
        }
        let group = |conversation: &str| {
            parse(&Params::from_pairs([
                ("EventType", "onMessageAdded"),
                ("ConversationSid", conversation),
                ("MessageSid", "IM0123456789abcdef0123456789abcdef"),
                ("Author", "+14155550100"),
            ]))
        };
        assert!(matches!(group("CH0123456789abcdef0123456789abcdef"), Ok(Webhook::Message(_))));
        assert!(matches!(group("CH1"), Err(Unusable::MalformedSid { field: "ConversationSid", .. })));
        assert_eq!(message_sid(&Params::from_pairs([("MessageSid", "SM1")])), None, "not for logs or keys");
    }

    #[test]
    fn a_nul_character_in_any_param_makes_the_message_unusable() {
        let p = Params::from_pairs([("MessageSid", SM), ("From", "+14155550100"), ("Body", "a\0b")]);
        assert_eq!(parse(&p), Err(Unusable::NulCharacter("Body".into())));
        let p = Params::from_pairs([("MessageSid", SM), ("From", "+14155550100"), ("X\0", "b")]);
        assert!(matches!(parse(&p), Err(Unusable::NulCharacter(_))));
    }

    #[test]
    fn a_voice_call_is_ignored_not_dead_lettered() {
        let p = Params::from_pairs([
            ("CallSid", "CA0123456789abcdef0123456789abcdef"),
            ("From", "+14155550100"),
            ("CallStatus", "ringing"),
        ]);
        assert_eq!(parse(&p), Ok(Webhook::Ignored { event: "voice call".into() }));
    }

    #[test]
    fn media_without_a_content_type_does_not_make_a_message_mixed() {
        let p = Params::from_pairs([
            ("MessageSid", SM),
            ("From", "+14155550100"),
            ("NumMedia", "2"),
            ("MediaContentType0", "image/jpeg"),
        ]);
        assert!(matches!(parse(&p), Ok(Webhook::Message(InboundMessage { content_type: ContentType::Image, .. }))));
        let p = Params::from_pairs([("MessageSid", SM), ("From", "+14155550100"), ("NumMedia", "1")]);
        assert!(matches!(parse(&p), Ok(Webhook::Message(InboundMessage { content_type: ContentType::Document, .. }))));
    }

    #[test]
    fn conversations_media_given_as_one_object_is_read() {
        let m = group_with_media(r#"{"Sid":"ME1","ContentType":"video/mp4","Filename":"a.mp4","Size":10}"#);
        assert_eq!(m.content_type, ContentType::Video);
    }
}
