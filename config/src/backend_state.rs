//! The one set of names for where a backend is in its life, shared by the balancer (its registry,
//! admin API and metrics), the autoscaler (its fleet) and the simulator. It lives in this crate
//! because it is the one they all depend on; the transitions between states are the balancer's
//! `lifecycle` module's.

use serde::{Deserialize, Serialize};

/// Where a backend sits in its life. Only `Active` backends receive new requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendState {
    /// Launched or registered, not yet healthy: paid for (when a provider started it) but not
    /// serving.
    Starting,
    /// Receives requests.
    Active,
    /// Receives no new requests; in-flight ones finish, then it is removed.
    Draining,
    /// Taken out of rotation for failing; may come back.
    Ejected,
}

impl BackendState {
    /// Every state, in the order they are reported.
    pub const ALL: [BackendState; 4] = [
        BackendState::Starting,
        BackendState::Active,
        BackendState::Draining,
        BackendState::Ejected,
    ];

    /// The name in the admin API, metrics, events and logs.
    pub fn name(self) -> &'static str {
        match self {
            BackendState::Starting => "starting",
            BackendState::Active => "active",
            BackendState::Draining => "draining",
            BackendState::Ejected => "ejected",
        }
    }

    /// The state as a byte, for an atomic cell.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// The state a byte from [`BackendState::as_u8`] stands for.
    pub fn from_u8(v: u8) -> Self {
        match v {
            0 => BackendState::Starting,
            1 => BackendState::Active,
            2 => BackendState::Draining,
            _ => BackendState::Ejected,
        }
    }
}

impl std::fmt::Display for BackendState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_names_round_trip() {
        for s in BackendState::ALL {
            assert_eq!(BackendState::from_u8(s.as_u8()), s);
            let json = serde_json_like(s);
            assert_eq!(json, s.name());
        }
    }

    /// The serde name, through the TOML serializer this crate already has.
    fn serde_json_like(s: BackendState) -> String {
        #[derive(Serialize)]
        struct W {
            s: BackendState,
        }
        let t = toml::to_string(&W { s }).unwrap();
        t.trim()
            .trim_start_matches("s = ")
            .trim_matches('"')
            .to_string()
    }
}
