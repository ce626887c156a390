//! Everything that is Twilio's: how a webhook is signed and what its params mean.
//! Nothing here knows about Supabase.

pub mod credentials;
mod params;
pub mod sender;
pub mod signature;
pub mod webhook;

pub use credentials::{Credentials, Refusal};
pub use params::Params;
pub use sender::{Bsuid, Sender};
pub use signature::{PublicUrl, SignatureError};
pub use webhook::{Channel, ContentType, InboundMessage, Kind, Unusable, Webhook};
