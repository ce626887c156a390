//! The service under test and the messages it is sent, shared by the tests and the benchmark.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{free_port, KeyKind};

/// The Twilio auth token the tests and the benchmark sign with.
pub const TWILIO_TOKEN: &str = "7c8a2c5e0b1d4f3a9e6b8d2c1f0a3e5b";
/// The public URL they sign over.
pub const PUBLIC_URL: &str = "https://ingest.example.com";
/// The AccountSid of their messages.
pub const ACCOUNT_SID: &str = "AC00000000000000000000000000000000";

/// The service `binary`, with nothing in its environment but a configuration for the test token,
/// `supabase_url` and `key`, listening on loopback `port` (and a free operations port).
pub fn service_command(binary: &Path, supabase_url: &str, key: KeyKind, spool_dir: &Path, port: u16) -> Command {
    let mut cmd = Command::new(binary);
    cmd.env_clear()
        .env("TWILIO_AUTH_TOKEN", TWILIO_TOKEN)
        .env("PUBLIC_URL", PUBLIC_URL)
        .env("SUPABASE_URL", supabase_url)
        .env("SUPABASE_SERVICE_ROLE_KEY", key.service_key())
        .env("SPOOL_DIR", spool_dir)
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("OPS_PORT", free_port().to_string());
    cmd
}

/// Waits until a process listens on loopback `port`; panics after 10 s.
pub fn wait_for_listener(port: u16) {
    let until = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The params of an inbound SMS (or WhatsApp message, with a `whatsapp:` sender), as Twilio's
/// Messaging webhook sends them.
pub fn sms_params(sid: &str, from: &str, to: &str, body: &str) -> Vec<(String, String)> {
    [
        ("MessageSid", sid),
        ("SmsMessageSid", sid),
        ("SmsSid", sid),
        ("AccountSid", ACCOUNT_SID),
        ("From", from),
        ("To", to),
        ("Body", body),
        ("NumMedia", "0"),
        ("NumSegments", "1"),
        ("SmsStatus", "received"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The params of a Conversations `onMessageAdded` webhook.
pub fn conversation_params(
    sid: &str,
    conversation: &str,
    author: &str,
    body: &str,
    index: usize,
) -> Vec<(String, String)> {
    [
        ("EventType", "onMessageAdded"),
        ("ConversationSid", conversation),
        ("MessageSid", sid),
        ("AccountSid", ACCOUNT_SID),
        ("Author", author),
        ("Body", body),
        ("ParticipantSid", "MB00000000000000000000000000000000"),
        ("Index", &index.to_string()),
        ("Source", "SMS"),
        ("RetryCount", "0"),
        ("Attributes", "{}"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}
