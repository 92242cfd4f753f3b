//! Network facts about the client: CIDR allow/deny lists and the client's
//! country, from a MaxMind-format database when configured, else from a
//! small CIDR-to-country table in the config.

use std::{net::IpAddr, path::Path};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// An allow list and a deny list of CIDR ranges (global or per team).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpRules {
    /// When non-empty, only clients in these ranges pass.
    pub ip_allow: Vec<IpNet>,
    /// Clients in these ranges are refused.
    pub ip_deny: Vec<IpNet>,
}

/// Why an address failed a rule set.
pub enum IpRefusal {
    /// The request carries no client IP but an allow list needs one.
    Unknown,
    Denied(IpNet),
    NotAllowed,
}

impl IpRules {
    pub fn is_empty(&self) -> bool {
        self.ip_allow.is_empty() && self.ip_deny.is_empty()
    }

    pub fn judge(&self, ip: Option<IpAddr>) -> Result<(), IpRefusal> {
        let Some(ip) = ip else {
            return if self.ip_allow.is_empty() {
                Ok(())
            } else {
                Err(IpRefusal::Unknown)
            };
        };
        if let Some(net) = self.ip_deny.iter().find(|n| n.contains(&ip)) {
            return Err(IpRefusal::Denied(*net));
        }
        if !self.ip_allow.is_empty() && !self.ip_allow.iter().any(|n| n.contains(&ip)) {
            return Err(IpRefusal::NotAllowed);
        }
        Ok(())
    }
}

/// One row of the config's CIDR-to-country table.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoEntry {
    pub cidr: IpNet,
    /// ISO 3166-1 alpha-2, e.g. `DE`.
    pub country: String,
}

/// Resolves a client IP to its country.
pub enum Geo {
    None,
    /// Most specific matching range wins.
    Table(Vec<GeoEntry>),
    MaxMind(maxminddb::Reader<Vec<u8>>),
}

impl Geo {
    /// The database file when given (read once, into memory), else the table.
    pub fn load(database: Option<&Path>, table: &[GeoEntry]) -> Result<Geo, String> {
        if let Some(path) = database {
            let reader = maxminddb::Reader::open_readfile(path)
                .map_err(|e| format!("cannot read the geo IP database {}: {e}", path.display()))?;
            return Ok(Geo::MaxMind(reader));
        }
        for entry in table {
            check_country(&entry.country)?;
        }
        let mut table = table.to_vec();
        table.sort_by_key(|e| std::cmp::Reverse(e.cidr.prefix_len()));
        Ok(if table.is_empty() {
            Geo::None
        } else {
            Geo::Table(table)
        })
    }

    /// The country of `ip`, upper-case, if known.
    pub fn country(&self, ip: IpAddr) -> Option<String> {
        match self {
            Geo::None => None,
            Geo::Table(table) => table
                .iter()
                .find(|e| e.cidr.contains(&ip))
                .map(|e| e.country.clone()),
            Geo::MaxMind(reader) => {
                let found = reader.lookup(ip).ok()?;
                let country: maxminddb::geoip2::Country = found.decode().ok()??;
                country.country.iso_code.map(str::to_ascii_uppercase)
            }
        }
    }
}

/// Country codes are ISO 3166-1 alpha-2, upper-case.
pub fn check_country(code: &str) -> Result<(), String> {
    if code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(format!(
            "country code {code:?}: use ISO 3166-1 alpha-2 in upper case, e.g. \"DE\""
        ))
    }
}

/// Whether two addresses share a network (`/v4` or `/v6` prefix bits).
pub fn same_network(a: IpAddr, b: IpAddr, v4: u8, v6: u8) -> bool {
    let prefix = |ip: IpAddr| {
        let bits = if ip.is_ipv4() { v4 } else { v6 };
        IpNet::new(ip, bits).map(|n| n.trunc()).ok()
    };
    match (prefix(a), prefix(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}
