//! What a webhook means: a Messaging webhook (SMS, MMS, WhatsApp) is a direct message from its
//! sender; a Conversations `onMessageAdded` webhook is a message in a group conversation.

use serde_json::Value;

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

/// An inbound message, valid by construction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundMessage {
    pub kind: Kind,
    pub message_sid: String,
    pub account_sid: Option<String>,
    pub user_phone: E164,
    /// The sender for a DM, the `ConversationSid` for a group.
    pub channel: String,
    pub first_name: Option<String>,
    pub content_type: ContentType,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Webhook {
    Message(InboundMessage),
    /// A webhook that is genuine but not an inbound message (another Conversations event, a
    /// delivery status callback); acknowledged and not stored.
    Ignored { event: String },
}

/// Why a signed webhook cannot become a job. Such a message is dead-lettered, never dropped.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum Unusable {
    #[error("no {0}: the webhook has no message id")]
    MissingMessageSid(&'static str),
    #[error("no sender: {0} is missing")]
    MissingSender(&'static str),
    #[error("{field} is not a phone number: {value:?}")]
    NotAPhoneNumber { field: &'static str, value: String },
    #[error("no ConversationSid on a Conversations webhook")]
    MissingConversationSid,
}

/// The message id under any of the names Twilio has given it.
pub fn message_sid(params: &Params) -> Option<&str> {
    ["MessageSid", "SmsMessageSid", "SmsSid"].iter().find_map(|k| params.non_blank(k))
}

pub fn parse(params: &Params) -> Result<Webhook, Unusable> {
    match params.non_blank("EventType") {
        Some("onMessageAdded") => parse_conversations(params).map(Webhook::Message),
        Some(event) => Ok(Webhook::Ignored { event: event.to_owned() }),
        None => parse_messaging(params),
    }
}

fn parse_messaging(params: &Params) -> Result<Webhook, Unusable> {
    // A delivery status callback pointed here by mistake is genuine but carries no inbound message.
    if let Some(status) = params.non_blank("MessageStatus").or_else(|| params.non_blank("SmsStatus")) {
        if !status.eq_ignore_ascii_case("received") {
            return Ok(Webhook::Ignored { event: format!("message status {status}") });
        }
    }
    let message_sid = message_sid(params).ok_or(Unusable::MissingMessageSid("MessageSid"))?;
    let from = params.non_blank("From").ok_or(Unusable::MissingSender("From"))?;
    let user_phone = E164::parse_address(from)
        .ok_or_else(|| Unusable::NotAPhoneNumber { field: "From", value: from.to_owned() })?;
    Ok(Webhook::Message(InboundMessage {
        kind: Kind::Dm,
        message_sid: message_sid.to_owned(),
        account_sid: params.non_blank("AccountSid").map(str::to_owned),
        channel: from.to_owned(),
        user_phone,
        first_name: params.non_blank("ProfileName").map(str::to_owned),
        content_type: messaging_content(params),
    }))
}

fn messaging_content(params: &Params) -> ContentType {
    if params.non_blank("Latitude").is_some() {
        return ContentType::Location;
    }
    let count: usize = params.non_blank("NumMedia").and_then(|n| n.parse().ok()).unwrap_or(0);
    let media = (0..count.min(10)).map(|i| {
        params.get(&format!("MediaContentType{i}")).map_or(ContentType::Document, ContentType::of_mime)
    });
    ContentType::of_media(media).unwrap_or_else(|| text_or_empty(params))
}

fn parse_conversations(params: &Params) -> Result<InboundMessage, Unusable> {
    let message_sid = params.non_blank("MessageSid").ok_or(Unusable::MissingMessageSid("MessageSid"))?;
    let conversation = params.non_blank("ConversationSid").ok_or(Unusable::MissingConversationSid)?;
    let author = params.non_blank("Author").ok_or(Unusable::MissingSender("Author"))?;
    let user_phone = E164::parse_address(author)
        .ok_or_else(|| Unusable::NotAPhoneNumber { field: "Author", value: author.to_owned() })?;
    Ok(InboundMessage {
        kind: Kind::Group,
        message_sid: message_sid.to_owned(),
        account_sid: params.non_blank("AccountSid").map(str::to_owned),
        channel: conversation.to_owned(),
        user_phone,
        first_name: None,
        content_type: conversations_content(params),
    })
}

fn conversations_content(params: &Params) -> ContentType {
    // `Media` is a JSON array of {Sid, ContentType, Filename, Size}.
    let media = params
        .non_blank("Media")
        .and_then(|m| serde_json::from_str::<Value>(m).ok())
        .and_then(|m| m.as_array().cloned())
        .unwrap_or_default();
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
        let m = message(&[("MessageSid", "SM1"), ("From", "+14155550100"), ("To", "+14155550199"), ("Body", "hi")]);
        assert_eq!(m.kind, Kind::Dm);
        assert_eq!(m.user_phone.as_str(), "+14155550100");
        assert_eq!(m.channel, "+14155550100");
        assert_eq!(m.content_type, ContentType::Text);
        assert_eq!(m.first_name, None);
    }

    #[test]
    fn a_whatsapp_dm_strips_the_prefix_and_names_the_user() {
        let m = message(&[
            ("MessageSid", "SM2"),
            ("From", "whatsapp:+14155550100"),
            ("ProfileName", "Ada"),
            ("WaId", "14155550100"),
            ("Body", "hello"),
        ]);
        assert_eq!(m.user_phone.as_str(), "+14155550100");
        assert_eq!(m.channel, "whatsapp:+14155550100");
        assert_eq!(m.first_name.as_deref(), Some("Ada"));
    }

    #[test]
    fn content_type_follows_media_and_location() {
        let mms = |types: &[&str]| {
            let mut pairs = vec![("MessageSid".to_string(), "MM1".to_string()), ("From".into(), "+14155550100".into())];
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
        let loc = message(&[("MessageSid", "SM3"), ("From", "+14155550100"), ("Latitude", "1.5"), ("Longitude", "2")]);
        assert_eq!(loc.content_type, ContentType::Location);
        let empty = message(&[("MessageSid", "SM4"), ("From", "+14155550100"), ("Body", "")]);
        assert_eq!(empty.content_type, ContentType::Empty);
    }

    #[test]
    fn a_conversations_message_is_a_group_message_in_its_conversation() {
        let m = message(&[
            ("EventType", "onMessageAdded"),
            ("ConversationSid", "CH123"),
            ("MessageSid", "IM123"),
            ("Author", "whatsapp:+447700900123"),
            ("Body", ""),
            ("Media", r#"[{"Sid":"ME1","ContentType":"audio/ogg","Filename":"a.ogg","Size":10}]"#),
        ]);
        assert_eq!(m.kind, Kind::Group);
        assert_eq!(m.channel, "CH123");
        assert_eq!(m.user_phone.as_str(), "+447700900123");
        assert_eq!(m.content_type, ContentType::Audio);
    }

    #[test]
    fn other_conversations_events_and_status_callbacks_are_ignored() {
        let p = Params::from_pairs([("EventType", "onConversationAdded"), ("ConversationSid", "CH1")]);
        assert_eq!(parse(&p).unwrap(), Webhook::Ignored { event: "onConversationAdded".into() });
        let p = Params::from_pairs([("MessageSid", "SM1"), ("From", "+14155550100"), ("MessageStatus", "delivered")]);
        assert!(matches!(parse(&p).unwrap(), Webhook::Ignored { .. }));
    }

    #[test]
    fn a_message_without_a_usable_sender_is_unusable() {
        let p = Params::from_pairs([("MessageSid", "SM1"), ("Body", "who am I")]);
        assert_eq!(parse(&p), Err(Unusable::MissingSender("From")));
        let p = Params::from_pairs([("EventType", "onMessageAdded"), ("ConversationSid", "CH1"), ("MessageSid", "IM1"), ("Author", "alice")]);
        assert!(matches!(parse(&p), Err(Unusable::NotAPhoneNumber { field: "Author", .. })));
        let p = Params::from_pairs([("From", "+14155550100")]);
        assert!(matches!(parse(&p), Err(Unusable::MissingMessageSid(_))));
    }
}
