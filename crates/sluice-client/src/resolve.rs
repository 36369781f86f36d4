//! Finding a broker's addresses without glibc's NSS: `/etc/hosts`, then DNS.
//!
//! The `sluice` binary is linked statically, and a static glibc cannot load the NSS modules its
//! `getaddrinfo` relies on, so in an empty container (`FROM scratch`) it cannot even resolve
//! `localhost`. [`resolve`] does what glibc's default `hosts: files dns` does, in Rust:
//!
//! 1. an IP literal (`127.0.0.1:9092`, `[::1]:9092`) is used as is;
//! 2. otherwise the name is looked up in `/etc/hosts` (hosts(5));
//! 3. otherwise the nameservers of `/etc/resolv.conf` (resolv.conf(5); the first three, or
//!    `127.0.0.1:53` when it names none, as glibc does) are asked in turn for the name's A and
//!    AAAA records over UDP ([RFC 1035 §4](https://www.rfc-editor.org/rfc/rfc1035#section-4),
//!    [RFC 3596](https://www.rfc-editor.org/rfc/rfc3596)), each given 2 seconds to answer.
//!
//! Addresses come IPv4 first, then IPv6. Names are completed with resolv.conf's `search` (or
//! `domain`) list as glibc does: a name with at least `ndots` dots (`options ndots:N`, by
//! default one) is tried as given first, then with each search domain; a shorter one with the domains
//! first; a name ending in `.` only as given. Other options are not honoured. In a build that is
//! not statically linked, a name this finds nowhere is then asked of the C library too (NSS:
//! LDAP, split DNS and the like); a static glibc build must not, as its NSS modules would have
//! to match the glibc it was built with. A reply counts only if it carries
//! the random id of the query and answers the question asked; CNAMEs are followed within the
//! reply, not with further queries. There is no EDNS and no retry over TCP: a truncated reply
//! gives the addresses it holds, or an error when it holds none.
//!
//! ```no_run
//! # async fn run() -> sluice_client::Result<()> {
//! let addresses = sluice_client::resolve::resolve("localhost:9092").await?;
//! assert!(addresses.iter().all(|address| address.port() == 9092));
//! # Ok(()) }
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::error::{Error, Result};

/// Where the host table is read from.
const HOSTS_PATH: &str = "/etc/hosts";
/// Where the nameservers are read from.
const RESOLV_CONF_PATH: &str = "/etc/resolv.conf";
/// Nameservers asked at most, as glibc's `MAXNS`.
const MAX_NAMESERVERS: usize = 3;
/// How long one nameserver has to answer a query.
const SERVER_TIMEOUT: Duration = Duration::from_secs(2);
/// Replies to other queries (late or forged) ignored while waiting for ours, before giving up.
const MAX_STRAY_REPLIES: usize = 16;
/// The receive buffer: replies without EDNS are at most 512 bytes (RFC 1035 §4.2.1); the slack
/// keeps a server that sends more from having its reply cut silently.
const MAX_REPLY_BYTES: usize = 4096;
const DNS_PORT: u16 = 53;
const HEADER_BYTES: usize = 12;
const MAX_LABEL_BYTES: usize = 63;
/// An encoded name's limit, length octets included (RFC 1035 §3.1).
const MAX_NAME_BYTES: usize = 255;
/// Compression pointers followed within one name: enough for any real name, and what ends a
/// pointer loop.
const MAX_POINTERS: usize = 32;
/// CNAMEs followed from the name asked for before the chain counts as a loop.
const MAX_ALIASES: usize = 16;
const CLASS_IN: u16 = 1;
const TYPE_CNAME: u16 = 5;
/// Header flags of a query: a standard query asking for recursion (RD).
const FLAGS_QUERY: u16 = 0x0100;
const FLAG_RESPONSE: u16 = 0x8000;
const FLAG_TRUNCATED: u16 = 0x0200;
const RCODE_MASK: u16 = 0x000f;
const RCODE_NO_ERROR: u16 = 0;
const RCODE_NAME_ERROR: u16 = 3;

/// The addresses of `host_port` (`host:port`, or `[ipv6]:port`), IPv4 ones first: the IP itself
/// if the host is a literal, else the host's entries in `/etc/hosts`, else what the nameservers
/// of `/etc/resolv.conf` answer (see the [module docs](crate::resolve) for what is and is not honoured).
///
/// Never returns an empty list. Fails with [`Error::InvalidAddress`] if `host_port` is not
/// `host:port`, and with [`Error::Resolve`] if the name has no address or no nameserver answered.
/// A missing `/etc/hosts` or `/etc/resolv.conf` counts as empty, as in glibc.
///
/// # Cancel safety
///
/// Cancel safe: it keeps no state, and dropping the future closes its UDP sockets, so replies to
/// queries already sent are dropped. In a build not statically linked, a C library lookup already
/// under way runs to its end on a blocking thread. Calling again is fine.
pub async fn resolve(host_port: &str) -> Result<Vec<SocketAddr>> {
    let (host, port) = split_host_port(host_port)?;
    // A literal needs neither file; the container may not have them.
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    // Both files are a few lines long; reading them on the runtime's thread is what glibc does.
    let hosts_text = std::fs::read_to_string(HOSTS_PATH).unwrap_or_default();
    let conf = std::fs::read_to_string(RESOLV_CONF_PATH).unwrap_or_default();
    let nameservers = parse_resolv_conf(&conf);
    let (search, ndots) = parse_search(&conf);
    let mut first_error = None;
    for name in candidates(host, &search, ndots) {
        match resolve_with(&format!("{name}:{port}"), &hosts_text, &nameservers).await {
            Ok(addresses) => return Ok(addresses),
            // The error for the name as given says the most; keep the first otherwise.
            Err(e) if name == host || first_error.is_none() => first_error = Some(e),
            Err(_) => {}
        }
    }
    #[cfg(not(target_feature = "crt-static"))]
    if let Ok(found) = tokio::net::lookup_host(host_port).await {
        let mut found: Vec<SocketAddr> = found.collect();
        if !found.is_empty() {
            found.sort_by_key(SocketAddr::is_ipv6);
            return Ok(found);
        }
    }
    Err(first_error.unwrap_or_else(|| Error::Resolve { host: host.to_owned(), reason: "no name to look up".into() }))
}

/// resolv.conf's search list (`search`, or `domain`; the last such line counts, at most 6
/// domains) and `ndots` (default 1, at most 15), as glibc reads them.
pub(crate) fn parse_search(text: &str) -> (Vec<String>, usize) {
    let mut search = Vec::new();
    let mut ndots = 1;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("search" | "domain") => {
                search = fields.map(|d| d.trim_end_matches('.').to_owned()).filter(|d| !d.is_empty()).take(6).collect();
            }
            Some("options") => {
                for option in fields {
                    if let Some(n) = option.strip_prefix("ndots:").and_then(|n| n.parse::<usize>().ok()) {
                        ndots = n.min(15);
                    }
                }
            }
            _ => {}
        }
    }
    (search, ndots)
}

/// The names to try for `name`, in glibc's order (see the [module docs](crate::resolve)).
pub(crate) fn candidates(name: &str, search: &[String], ndots: usize) -> Vec<String> {
    if let Some(absolute) = name.strip_suffix('.') {
        return vec![absolute.to_owned()];
    }
    let searched = search.iter().map(|domain| format!("{name}.{domain}"));
    if name.matches('.').count() >= ndots {
        std::iter::once(name.to_owned()).chain(searched).collect()
    } else {
        searched.chain(std::iter::once(name.to_owned())).collect()
    }
}

/// [`resolve`] with the host table's text and the nameservers given, so that tests need not
/// touch `/etc`.
async fn resolve_with(host_port: &str, hosts_text: &str, nameservers: &[SocketAddr]) -> Result<Vec<SocketAddr>> {
    let (host, port) = split_host_port(host_port)?;
    let ips = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => lookup(host, hosts_text, nameservers).await?,
    };
    Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect())
}

/// The addresses of a name: from the host table if it lists the name, else from DNS.
async fn lookup(name: &str, hosts_text: &str, nameservers: &[SocketAddr]) -> Result<Vec<IpAddr>> {
    let from_hosts = parse_hosts(hosts_text, name);
    if !from_hosts.is_empty() {
        return Ok(from_hosts);
    }
    let failed = |reason: String| Error::Resolve { host: name.to_owned(), reason };
    // A name DNS cannot carry fails here, once, rather than at every nameserver.
    check_name(name).map_err(failed)?;
    let found = ask_nameservers(name, nameservers).await.map_err(failed)?;
    if found.is_empty() {
        let reason = format!(
            "neither {HOSTS_PATH} nor DNS knows the name, nor the name completed with the search \
             domains of {RESOLV_CONF_PATH} (check its spelling; a broker's own name comes from \
             its advertised listeners)"
        );
        return Err(failed(reason));
    }
    Ok(ipv4_first(unique(found)))
}

/// Splits `host:port`, or `[ipv6]:port`, into its host (without brackets) and port.
pub(crate) fn split_host_port(host_port: &str) -> Result<(&str, u16)> {
    let invalid = |reason: String| Error::InvalidAddress { address: host_port.to_owned(), reason };
    let missing_port = || invalid("the port is missing (write host:port, e.g. localhost:9092, or [::1]:9092)".into());
    let (host, port) = match host_port.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) =
                bracketed.split_once(']').ok_or_else(|| invalid("the ] closing the IPv6 address is missing".into()))?;
            match after.strip_prefix(':') {
                Some(port) => (host, port),
                None if after.is_empty() => return Err(missing_port()),
                None => return Err(invalid(format!("{after:?} follows the ] where :port should"))),
            }
        }
        None => {
            let (host, port) = host_port.rsplit_once(':').ok_or_else(missing_port)?;
            if host.contains(':') {
                return Err(invalid("an IPv6 address needs brackets, e.g. [::1]:9092".into()));
            }
            (host, port)
        }
    };
    if host.is_empty() {
        return Err(invalid("the host is empty".into()));
    }
    match port.parse::<u16>() {
        Ok(port) if port != 0 => Ok((host, port)),
        _ if port.is_empty() => Err(missing_port()),
        _ => Err(invalid(format!("the port {port:?} is not a number from 1 to 65535"))),
    }
}

/// The addresses a host table (the text of `/etc/hosts`, hosts(5)) gives `name`, IPv4 ones
/// first, each once. A line is an address followed by names (canonical name and aliases);
/// `#` starts a comment; names compare case-insensitively; lines whose address does not parse
/// are skipped.
pub(crate) fn parse_hosts(text: &str, name: &str) -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    for line in text.lines() {
        let line = line.split_once('#').map_or(line, |(before, _)| before);
        let mut fields = line.split_whitespace();
        let Some(Ok(address)) = fields.next().map(str::parse::<IpAddr>) else { continue };
        if fields.any(|alias| same_name(alias, name)) && !addresses.contains(&address) {
            addresses.push(address);
        }
    }
    ipv4_first(addresses)
}

/// The nameservers a resolver configuration (the text of `/etc/resolv.conf`, resolv.conf(5))
/// names on its `nameserver` lines, port 53, at most the first three; `127.0.0.1:53` when it
/// names none, as glibc does. Other lines are ignored, and so are IPv6 addresses scoped by
/// interface name (`fe80::1%eth0`; a numeric scope, `fe80::1%2`, is kept).
pub(crate) fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut servers: Vec<SocketAddr> = text
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            match fields.next() {
                Some("nameserver") => nameserver_address(fields.next()?),
                _ => None,
            }
        })
        .take(MAX_NAMESERVERS)
        .collect();
    if servers.is_empty() {
        servers.push(SocketAddr::from((Ipv4Addr::LOCALHOST, DNS_PORT)));
    }
    servers
}

fn nameserver_address(field: &str) -> Option<SocketAddr> {
    let (address, scope) = match field.split_once('%') {
        Some((address, scope)) => (address, Some(scope)),
        None => (field, None),
    };
    match address.parse::<IpAddr>().ok()? {
        IpAddr::V4(v4) if scope.is_none() => Some(SocketAddr::from((v4, DNS_PORT))),
        IpAddr::V4(_) => None,
        IpAddr::V6(v6) => {
            let scope_id = match scope {
                Some(scope) => scope.parse().ok()?,
                None => 0,
            };
            Some(SocketAddr::V6(SocketAddrV6::new(v6, DNS_PORT, 0, scope_id)))
        }
    }
}

/// Which records a DNS query asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueryType {
    /// IPv4 addresses (RFC 1035 §3.4.1).
    A,
    /// IPv6 addresses (RFC 3596 §2.1).
    Aaaa,
}

impl QueryType {
    /// The type's code on the wire (1 for A, 28 for AAAA).
    pub(crate) fn code(self) -> u16 {
        match self {
            Self::A => 1,
            Self::Aaaa => 28,
        }
    }
}

/// A DNS query (RFC 1035 §4.1) with id `id`, asking recursively for the `query_type` records of
/// `name` (absolute; a trailing dot is allowed). Fails with [`Error::Resolve`] for a name DNS
/// cannot carry: an empty label, a label over 63 bytes, or over 255 bytes in all.
#[cfg(test)]
pub(crate) fn encode_query(id: u16, name: &str, query_type: QueryType) -> Result<Vec<u8>> {
    encode(id, name, query_type).map_err(|reason| Error::Resolve { host: name.to_owned(), reason })
}

fn encode(id: u16, name: &str, query_type: QueryType) -> Result<Vec<u8>, String> {
    let labels = check_name(name)?;
    let mut query = Vec::with_capacity(HEADER_BYTES + MAX_NAME_BYTES + 4);
    query.extend_from_slice(&id.to_be_bytes());
    query.extend_from_slice(&FLAGS_QUERY.to_be_bytes());
    // One question; no answer, authority or additional records.
    query.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    for label in labels.split('.') {
        let length = u8::try_from(label.len()).map_err(|_| format!("the label {label:?} is too long"))?;
        query.push(length);
        query.extend_from_slice(label.as_bytes());
    }
    query.push(0);
    query.extend_from_slice(&query_type.code().to_be_bytes());
    query.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(query)
}

/// Checks that DNS can carry `name` and returns it without its trailing dot.
fn check_name(name: &str) -> Result<&str, String> {
    let absolute = name.strip_suffix('.').unwrap_or(name);
    if absolute.is_empty() {
        return Err("the name is empty".into());
    }
    let mut encoded_bytes: usize = 1;
    for label in absolute.split('.') {
        if label.is_empty() || label.len() > MAX_LABEL_BYTES {
            return Err(format!(
                "the label {label:?} is not 1 to {MAX_LABEL_BYTES} bytes long, so DNS cannot carry it"
            ));
        }
        encoded_bytes = encoded_bytes.saturating_add(label.len()).saturating_add(1);
    }
    if encoded_bytes > MAX_NAME_BYTES {
        return Err(format!("the name is longer than DNS allows ({MAX_NAME_BYTES} bytes encoded)"));
    }
    Ok(absolute)
}

/// The addresses a DNS reply gives `name` for a query with id `id` of type `query_type`, with
/// the CNAMEs in the reply followed. Empty if the name does not exist (NXDOMAIN) or has no such
/// records. Fails with [`Error::Resolve`] if the reply's id is not `id`, if it answers another
/// question, if the server reported an error, if the bytes are malformed (never a panic), or if it
/// was truncated (TC) and holds no address.
#[cfg(test)]
pub(crate) fn decode_reply(reply: &[u8], id: u16, name: &str, query_type: QueryType) -> Result<Vec<IpAddr>> {
    decode(reply, id, name, query_type).map_err(|reason| Error::Resolve { host: name.to_owned(), reason })
}

fn decode(reply: &[u8], id: u16, name: &str, query_type: QueryType) -> Result<Vec<IpAddr>, String> {
    let mut reader = Reader { message: reply, position: 0 };
    let short_header = || format!("the reply is shorter than a DNS header ({HEADER_BYTES} bytes)");
    let reply_id = reader.u16().ok_or_else(short_header)?;
    let flags = reader.u16().ok_or_else(short_header)?;
    let question_count = reader.u16().ok_or_else(short_header)?;
    let answer_count = reader.u16().ok_or_else(short_header)?;
    reader.take(4).ok_or_else(short_header)?; // authority and additional counts: unused
    if reply_id != id {
        return Err(format!("the reply's id {reply_id} is not the query's {id}"));
    }
    if flags & FLAG_RESPONSE == 0 {
        return Err("the nameserver sent a query, not a reply".into());
    }
    match flags & RCODE_MASK {
        RCODE_NO_ERROR => {}
        RCODE_NAME_ERROR => return Ok(Vec::new()),
        rcode => return Err(format!("the nameserver answered {}", rcode_name(rcode))),
    }
    if question_count != 1 {
        return Err(format!("the reply holds {question_count} questions, not the 1 asked"));
    }
    let (question, question_type, _class) = read_question(&mut reader)?;
    if !same_name(&question, name) || question_type != query_type.code() {
        return Err(format!("the reply answers another question ({question:?}, type {question_type})"));
    }
    let truncated = flags & FLAG_TRUNCATED != 0;
    let mut records = Vec::new();
    for index in 0..answer_count {
        match read_record(&mut reader) {
            Ok(record) => records.push(record),
            // A truncated reply is used for the records it holds whole.
            Err(_) if truncated => break,
            Err(reason) => return Err(format!("answer {}: {reason}", u32::from(index).saturating_add(1))),
        }
    }
    let addresses = follow_aliases(&records, name, query_type)?;
    if truncated && addresses.is_empty() {
        return Err("the reply was truncated before any address (sluice does not retry over TCP)".into());
    }
    Ok(addresses)
}

fn rcode_name(rcode: u16) -> String {
    match rcode {
        1 => "FORMERR (it could not read the query)".into(),
        2 => "SERVFAIL (it failed to look the name up)".into(),
        4 => "NOTIMP (it does not do such queries)".into(),
        5 => "REFUSED (it does not answer this client)".into(),
        other => format!("error code {other}"),
    }
}

fn read_question(reader: &mut Reader<'_>) -> Result<(String, u16, u16), String> {
    let name = reader.name().map_err(|reason| format!("the question: {reason}"))?;
    let short = || "the reply ends inside the question".to_owned();
    let question_type = reader.u16().ok_or_else(short)?;
    let class = reader.u16().ok_or_else(short)?;
    Ok((name, question_type, class))
}

/// One answer record, as far as address lookups care.
#[derive(Debug)]
struct Record {
    owner: String,
    data: RecordData,
}

#[derive(Debug)]
enum RecordData {
    /// An A or AAAA record, with its type.
    Address(u16, IpAddr),
    /// A CNAME: the owner is an alias of this name.
    Alias(String),
    /// Anything else (another type, or another class).
    Other,
}

fn read_record(reader: &mut Reader<'_>) -> Result<Record, String> {
    let owner = reader.name()?;
    let short = || "the reply ends inside the record".to_owned();
    let record_type = reader.u16().ok_or_else(short)?;
    let class = reader.u16().ok_or_else(short)?;
    let _ttl = reader.u32().ok_or_else(short)?;
    let data_length = usize::from(reader.u16().ok_or_else(short)?);
    let data_start = reader.position;
    let data = reader.take(data_length).ok_or_else(short)?;
    let bad_length = || format!("a type {record_type} record with {data_length} bytes of data");
    let data = match (class, record_type) {
        (CLASS_IN, 1) => {
            let octets: [u8; 4] = data.try_into().map_err(|_| bad_length())?;
            RecordData::Address(record_type, IpAddr::from(octets))
        }
        (CLASS_IN, 28) => {
            let octets: [u8; 16] = data.try_into().map_err(|_| bad_length())?;
            RecordData::Address(record_type, IpAddr::from(octets))
        }
        (CLASS_IN, TYPE_CNAME) => {
            // The target may point back into the rest of the message, so it is read in place.
            let mut target = Reader { message: reader.message, position: data_start };
            RecordData::Alias(target.name().map_err(|reason| format!("the CNAME's target: {reason}"))?)
        }
        _ => RecordData::Other,
    };
    Ok(Record { owner, data })
}

/// The addresses of `name` among `records`, through the chain of CNAMEs from it.
fn follow_aliases(records: &[Record], name: &str, query_type: QueryType) -> Result<Vec<IpAddr>, String> {
    let mut current = name;
    for _ in 0..=MAX_ALIASES {
        let owned_by_current = || records.iter().filter(|record| same_name(&record.owner, current));
        let addresses: Vec<IpAddr> = owned_by_current()
            .filter_map(|record| match record.data {
                RecordData::Address(record_type, ip) if record_type == query_type.code() => Some(ip),
                _ => None,
            })
            .collect();
        if !addresses.is_empty() {
            return Ok(addresses);
        }
        let alias_of = owned_by_current().find_map(|record| match &record.data {
            RecordData::Alias(target) => Some(target.as_str()),
            _ => None,
        });
        match alias_of {
            Some(target) => current = target,
            // The end of the chain: no address here, or the target's records are not in this reply.
            None => return Ok(Vec::new()),
        }
    }
    Err(format!("the reply chains more than {MAX_ALIASES} CNAMEs from the name (a CNAME loop?)"))
}

/// A cursor over a DNS message that reads through checked getters only.
struct Reader<'a> {
    message: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        let end = self.position.checked_add(count)?;
        let bytes = self.message.get(self.position..end)?;
        self.position = end;
        Some(bytes)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    /// Reads a name, following compression pointers (RFC 1035 §4.1.4), and leaves the cursor
    /// after the name's bytes at this position (after the first pointer, if any). The name comes
    /// dotted, without a trailing dot.
    fn name(&mut self) -> Result<String, String> {
        let short = || "the reply ends inside a name".to_owned();
        let mut name = String::new();
        let mut encoded_bytes: usize = 1;
        let mut pointers = 0;
        let mut cursor = Reader { message: self.message, position: self.position };
        let mut resume_at = None;
        loop {
            let length = cursor.u8().ok_or_else(short)?;
            match length {
                0 => break,
                1..=63 => {
                    let label = cursor.take(usize::from(length)).ok_or_else(short)?;
                    encoded_bytes = encoded_bytes.saturating_add(label.len()).saturating_add(1);
                    if encoded_bytes > MAX_NAME_BYTES {
                        return Err(format!("a name longer than {MAX_NAME_BYTES} bytes"));
                    }
                    if !name.is_empty() {
                        name.push('.');
                    }
                    name.push_str(&String::from_utf8_lossy(label));
                }
                0xc0..=0xff => {
                    let low = cursor.u8().ok_or_else(short)?;
                    pointers += 1;
                    if pointers > MAX_POINTERS {
                        return Err(format!(
                            "a name of more than {MAX_POINTERS} compression pointers (a pointer loop?)"
                        ));
                    }
                    resume_at.get_or_insert(cursor.position);
                    cursor.position = usize::from(u16::from_be_bytes([length & 0x3f, low]));
                }
                _ => return Err(format!("a label of unknown type (length octet {length:#04x})")),
            }
        }
        self.position = resume_at.unwrap_or(cursor.position);
        Ok(name)
    }
}

/// Asks the nameservers in turn, until one answers both the A and the AAAA query or gives an
/// address. Fails, with what each nameserver did, if none did.
async fn ask_nameservers(name: &str, nameservers: &[SocketAddr]) -> Result<Vec<IpAddr>, String> {
    let mut failures = Vec::new();
    for &server in nameservers.iter().take(MAX_NAMESERVERS) {
        let (v4, v6) =
            tokio::join!(ask_in_time(server, name, QueryType::A), ask_in_time(server, name, QueryType::Aaaa));
        match (v4, v6) {
            // Both answered: the server's word is final, even "no such name".
            (Ok(mut v4), Ok(v6)) => {
                v4.extend(v6);
                return Ok(v4);
            }
            (Ok(found), Err(_)) | (Err(_), Ok(found)) if !found.is_empty() => return Ok(found),
            (Err(reason), _) | (_, Err(reason)) => failures.push(format!("{server}: {reason}")),
        }
    }
    if failures.is_empty() {
        return Err("no nameserver to ask".into());
    }
    Err(format!(
        "no nameserver answered ({}; are the nameservers in {RESOLV_CONF_PATH} right and reachable?)",
        failures.join("; ")
    ))
}

async fn ask_in_time(server: SocketAddr, name: &str, query_type: QueryType) -> Result<Vec<IpAddr>, String> {
    match tokio::time::timeout(SERVER_TIMEOUT, ask(server, name, query_type)).await {
        Ok(answer) => answer,
        Err(_) => Err(format!("no {query_type:?} answer within {SERVER_TIMEOUT:?}")),
    }
}

/// Sends one query to `server` and waits for the reply with its id.
async fn ask(server: SocketAddr, name: &str, query_type: QueryType) -> Result<Vec<IpAddr>, String> {
    let mut id = [0u8; 2];
    getrandom::getrandom(&mut id).map_err(|e| format!("no randomness for the query id: {e}"))?;
    let id = u16::from_be_bytes(id);
    let query = encode(id, name, query_type)?;
    let local = match server {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let socket = UdpSocket::bind(local).await.map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    // Connected, so that the kernel drops datagrams from anyone but the server.
    socket.connect(server).await.map_err(|e| format!("cannot reach it: {e}"))?;
    socket.send(&query).await.map_err(|e| format!("cannot send the query: {e}"))?;
    let mut buffer = vec![0u8; MAX_REPLY_BYTES];
    for _ in 0..MAX_STRAY_REPLIES {
        let length = socket.recv(&mut buffer).await.map_err(|e| format!("cannot read the reply: {e}"))?;
        let reply = buffer.get(..length).unwrap_or_default();
        // A reply to another query (a late one, or a forgery) is not an answer: wait for ours.
        if reply.get(..2) == Some(id.to_be_bytes().as_slice()) {
            return decode(reply, id, name, query_type);
        }
    }
    Err(format!("{MAX_STRAY_REPLIES} replies in a row were to other queries"))
}

/// Whether two host names are the same: ASCII case and a trailing dot do not count.
fn same_name(a: &str, b: &str) -> bool {
    let a = a.strip_suffix('.').unwrap_or(a);
    let b = b.strip_suffix('.').unwrap_or(b);
    a.eq_ignore_ascii_case(b)
}

/// Orders IPv4 addresses before IPv6 ones, keeping the order within each.
fn ipv4_first(mut addresses: Vec<IpAddr>) -> Vec<IpAddr> {
    addresses.sort_by_key(IpAddr::is_ipv6);
    addresses
}

/// Drops repeated addresses, keeping the first of each.
fn unique(addresses: Vec<IpAddr>) -> Vec<IpAddr> {
    let mut kept = Vec::with_capacity(addresses.len());
    for address in addresses {
        if !kept.contains(&address) {
            kept.push(address);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn socket(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    /// No address (a bare `[]` would not say which type it holds).
    const NONE: [IpAddr; 0] = [];

    const HOSTS: &str = "\
# The host table of a test container.
127.0.0.1\tlocalhost
::1 localhost ip6-localhost ip6-loopback   # both loopbacks
10.0.0.5  Kafka-1.Example.COM kafka-1 broker   
10.0.0.6  kafka-2.example.com
# 10.0.0.7 kafka-1
not-an-address kafka-1
fd00::5 kafka-1
10.0.0.5 kafka-1
";

    #[test]
    fn resolve_hosts_finds_every_line_naming_the_host_ipv4_first() {
        assert_eq!(parse_hosts(HOSTS, "localhost"), [ip("127.0.0.1"), ip("::1")]);
        assert_eq!(parse_hosts(HOSTS, "kafka-1"), [ip("10.0.0.5"), ip("fd00::5")]);
    }

    #[test]
    fn resolve_hosts_matches_aliases_case_insensitively() {
        assert_eq!(parse_hosts(HOSTS, "KAFKA-1.example.com"), [ip("10.0.0.5")]);
        assert_eq!(parse_hosts(HOSTS, "broker"), [ip("10.0.0.5")]);
        assert_eq!(parse_hosts(HOSTS, "ip6-loopback"), [ip("::1")]);
        assert_eq!(parse_hosts(HOSTS, "kafka-2.example.com."), [ip("10.0.0.6")]);
    }

    #[test]
    fn resolve_hosts_ignores_comments_and_unknown_names() {
        assert_eq!(parse_hosts(HOSTS, "kafka-3"), NONE);
        assert_eq!(parse_hosts(HOSTS, "both"), NONE, "a comment's words are not names");
        assert_eq!(parse_hosts(HOSTS, "loopbacks"), NONE);
        assert_eq!(parse_hosts(HOSTS, "127.0.0.1"), NONE, "an address is not a name");
        assert_eq!(parse_hosts("", "localhost"), NONE);
        assert_eq!(parse_hosts(HOSTS, ""), NONE);
    }

    #[test]
    fn resolve_conf_lists_nameservers_with_port_53() {
        let text = "\
# generated
search example.com svc.cluster.local
options ndots:5
nameserver 10.96.0.10
nameserver   2001:db8::53 # second
;nameserver 10.0.0.99
nameserver fe80::1%eth0
nameserver fe80::1%2
nameserver bogus
nameserver 10.0.0.4
";
        let servers = parse_resolv_conf(text);
        let scoped = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, 2));
        assert_eq!(servers, [socket("10.96.0.10:53"), socket("[2001:db8::53]:53"), scoped], "the first three");
    }

    #[test]
    fn resolve_conf_without_nameservers_falls_back_to_localhost() {
        assert_eq!(parse_resolv_conf(""), [socket("127.0.0.1:53")]);
        assert_eq!(parse_resolv_conf("search example.com\nnameserver\n"), [socket("127.0.0.1:53")]);
    }

    #[test]
    fn resolve_splits_host_and_port() {
        assert_eq!(split_host_port("localhost:9092").unwrap(), ("localhost", 9092));
        assert_eq!(split_host_port("10.0.0.5:1").unwrap(), ("10.0.0.5", 1));
        assert_eq!(split_host_port("[::1]:9092").unwrap(), ("::1", 9092));
        assert_eq!(split_host_port("[fe80::1%2]:65535").unwrap(), ("fe80::1%2", 65535));
    }

    #[test]
    fn resolve_rejects_addresses_that_are_not_host_port_naming_them() {
        for (input, reason) in [
            ("localhost", "port is missing"),
            ("localhost:", "port is missing"),
            ("[::1]", "port is missing"),
            ("[::1]:", "port is missing"),
            ("localhost:kafka", "\"kafka\" is not a number"),
            ("localhost:65536", "\"65536\" is not a number"),
            ("localhost:0", "\"0\" is not a number"),
            ("::1:9092", "needs brackets"),
            ("[::1:9092", "] closing"),
            ("[::1]9092", "where :port should"),
            (":9092", "host is empty"),
            ("[]:9092", "host is empty"),
        ] {
            let err = split_host_port(input).unwrap_err();
            assert!(matches!(&err, Error::InvalidAddress { address, .. } if address == input), "{input}: {err:?}");
            let text = err.to_string();
            assert!(text.contains(input) && text.contains(reason), "{input}: {text}");
            assert!(!err.is_retriable(), "{input}");
        }
    }

    #[test]
    fn resolve_encodes_a_query() {
        let query = encode_query(0xabcd, "kafka-1.example.", QueryType::Aaaa).unwrap();
        let mut expected = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        expected.extend_from_slice(b"\x07kafka-1\x07example\x00\x00\x1c\x00\x01");
        assert_eq!(query, expected);
    }

    #[test]
    fn resolve_refuses_to_encode_names_dns_cannot_carry() {
        let long_label = "a".repeat(64);
        let long_name = ["a"; 128].join(".");
        for name in ["", ".", "a..b", ".a", long_label.as_str(), long_name.as_str()] {
            let err = encode_query(1, name, QueryType::A).unwrap_err();
            assert!(matches!(err, Error::Resolve { .. }), "{name:?}: {err:?}");
        }
        assert!(encode_query(1, &"a".repeat(63), QueryType::A).is_ok());
        assert!(encode_query(1, &["a"; 127].join("."), QueryType::A).is_ok(), "255 bytes encoded");
    }

    // Building replies by hand.

    const RESPONSE: u16 = 0x8180; // a reply, recursion desired and available, NOERROR

    fn header(id: u16, flags: u16, questions: u16, answers: u16) -> Vec<u8> {
        let mut bytes = Vec::new();
        for field in [id, flags, questions, answers, 0, 0] {
            bytes.extend_from_slice(&field.to_be_bytes());
        }
        bytes
    }

    fn name(dotted: &str) -> Vec<u8> {
        let mut bytes = Vec::new();
        for label in dotted.split('.') {
            bytes.push(label.len() as u8);
            bytes.extend_from_slice(label.as_bytes());
        }
        bytes.push(0);
        bytes
    }

    fn question(dotted: &str, query_type: u16) -> Vec<u8> {
        let mut bytes = name(dotted);
        bytes.extend_from_slice(&query_type.to_be_bytes());
        bytes.extend_from_slice(&CLASS_IN.to_be_bytes());
        bytes
    }

    fn record(owner: &[u8], record_type: u16, data: &[u8]) -> Vec<u8> {
        let mut bytes = owner.to_vec();
        bytes.extend_from_slice(&record_type.to_be_bytes());
        bytes.extend_from_slice(&CLASS_IN.to_be_bytes());
        bytes.extend_from_slice(&300u32.to_be_bytes());
        bytes.extend_from_slice(&(data.len() as u16).to_be_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    /// A pointer to the question's name, which starts right after the header.
    const TO_QUESTION: [u8; 2] = [0xc0, 12];

    fn a_reply(id: u16) -> Vec<u8> {
        let mut reply = header(id, RESPONSE, 1, 2);
        reply.extend(question("kafka.example.com", 1));
        reply.extend(record(&TO_QUESTION, 1, &[10, 0, 0, 7]));
        reply.extend(record(&TO_QUESTION, 1, &[10, 0, 0, 8]));
        reply
    }

    #[test]
    fn resolve_decodes_a_records() {
        let addresses = decode_reply(&a_reply(0x1234), 0x1234, "Kafka.Example.com", QueryType::A).unwrap();
        assert_eq!(addresses, [ip("10.0.0.7"), ip("10.0.0.8")]);
    }

    #[test]
    fn resolve_decodes_aaaa_records() {
        let mut reply = header(7, RESPONSE, 1, 1);
        reply.extend(question("kafka.example.com", 28));
        reply.extend(record(&name("kafka.example.com"), 28, &"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets()));
        assert_eq!(decode_reply(&reply, 7, "kafka.example.com", QueryType::Aaaa).unwrap(), [ip("2001:db8::7")]);
    }

    #[test]
    fn resolve_follows_a_cname_chain_through_compression_pointers() {
        let mut reply = header(9, RESPONSE, 1, 4);
        reply.extend(question("kafka.example.com", 1));
        // kafka.example.com is an alias of broker-1.example.com: "broker-1" then a pointer to
        // "example.com" inside the question (offset 12 + 1 + "kafka".len()).
        let first_target = reply.len() + TO_QUESTION.len() + 10;
        reply.extend(record(&TO_QUESTION, TYPE_CNAME, b"\x08broker-1\xc0\x12"));
        // broker-1.example.com is an alias of node.internal.
        let second_target = reply.len() + 2 + 10;
        reply.extend(record(&[0xc0, first_target as u8], TYPE_CNAME, &name("node.internal")));
        // An address of another name, which must not be taken.
        reply.extend(record(&name("other.example.com"), 1, &[192, 0, 2, 1]));
        reply.extend(record(&[0xc0, second_target as u8], 1, &[192, 0, 2, 9]));
        let addresses = decode_reply(&reply, 9, "kafka.example.com", QueryType::A).unwrap();
        assert_eq!(addresses, [ip("192.0.2.9")]);
    }

    #[test]
    fn resolve_gives_nothing_for_a_cname_whose_target_is_not_in_the_reply() {
        let mut reply = header(9, RESPONSE, 1, 1);
        reply.extend(question("kafka.example.com", 1));
        reply.extend(record(&TO_QUESTION, TYPE_CNAME, &name("elsewhere.example.net")));
        assert_eq!(decode_reply(&reply, 9, "kafka.example.com", QueryType::A).unwrap(), NONE);
    }

    #[test]
    fn resolve_stops_at_a_cname_loop() {
        let mut reply = header(9, RESPONSE, 1, 2);
        reply.extend(question("a.example", 1));
        reply.extend(record(&name("a.example"), TYPE_CNAME, &name("b.example")));
        reply.extend(record(&name("b.example"), TYPE_CNAME, &name("a.example")));
        let err = decode_reply(&reply, 9, "a.example", QueryType::A).unwrap_err();
        assert!(err.to_string().contains("CNAME loop"), "{err}");
    }

    #[test]
    fn resolve_stops_at_a_compression_pointer_loop() {
        // The question's name points at itself.
        let mut reply = header(9, RESPONSE, 1, 0);
        reply.extend_from_slice(&TO_QUESTION);
        reply.extend_from_slice(&[0, 1, 0, 1]);
        let err = decode_reply(&reply, 9, "a.example", QueryType::A).unwrap_err();
        assert!(err.to_string().contains("pointer loop"), "{err}");
        // Two labels pointing at each other, behind a good question.
        let mut reply = header(9, RESPONSE, 1, 1);
        reply.extend(question("a.example", 1));
        let loop_at = reply.len() as u8;
        reply.extend(record(&[1, b'x', 0xc0, loop_at], 1, &[192, 0, 2, 1]));
        let err = decode_reply(&reply, 9, "a.example", QueryType::A).unwrap_err();
        assert!(err.to_string().contains("pointer loop"), "{err}");
    }

    #[test]
    fn resolve_rejects_every_cut_reply_without_panicking() {
        let reply = a_reply(3);
        for length in 0..reply.len() {
            let cut = &reply[..length];
            assert!(decode_reply(cut, 3, "kafka.example.com", QueryType::A).is_err(), "cut at {length}");
        }
    }

    #[test]
    fn resolve_survives_garbage() {
        // Every single-byte change of a good reply: an answer or an error, never a panic.
        let reply = a_reply(3);
        for position in 0..reply.len() {
            for value in [0x00, 0x01, 0x3f, 0x40, 0x80, 0xc0, 0xff] {
                let mut changed = reply.clone();
                changed[position] = value;
                let _ = decode_reply(&changed, 3, "kafka.example.com", QueryType::A);
            }
        }
    }

    #[test]
    fn resolve_rejects_a_reply_with_another_id() {
        let err = decode_reply(&a_reply(0x1234), 0x4321, "kafka.example.com", QueryType::A).unwrap_err();
        assert!(err.to_string().contains("id 4660 is not the query's 17185"), "{err}");
    }

    #[test]
    fn resolve_rejects_a_reply_to_another_question() {
        let err = decode_reply(&a_reply(1), 1, "kafka.example.org", QueryType::A).unwrap_err();
        assert!(err.to_string().contains("another question"), "{err}");
        let err = decode_reply(&a_reply(1), 1, "kafka.example.com", QueryType::Aaaa).unwrap_err();
        assert!(err.to_string().contains("another question"), "{err}");
        let mut query = a_reply(1);
        query[2] = 0x01; // not a reply
        assert!(decode_reply(&query, 1, "kafka.example.com", QueryType::A).is_err());
    }

    #[test]
    fn resolve_reads_the_response_code() {
        let mut reply = header(5, RESPONSE | RCODE_NAME_ERROR, 1, 0);
        reply.extend(question("missing.example", 1));
        assert_eq!(decode_reply(&reply, 5, "missing.example", QueryType::A).unwrap(), NONE, "NXDOMAIN");
        let mut reply = header(5, RESPONSE | 2, 1, 0);
        reply.extend(question("missing.example", 1));
        let err = decode_reply(&reply, 5, "missing.example", QueryType::A).unwrap_err();
        assert!(err.to_string().contains("SERVFAIL"), "{err}");
    }

    #[test]
    fn resolve_uses_what_a_truncated_reply_holds() {
        // Two answers announced, one and a half sent.
        let mut reply = a_reply(4);
        reply.truncate(reply.len() - 3);
        reply[2] |= 0x02; // TC
        assert_eq!(decode_reply(&reply, 4, "kafka.example.com", QueryType::A).unwrap(), [ip("10.0.0.7")]);
        // Nothing whole: an error, not an empty answer.
        let mut reply = header(4, RESPONSE | FLAG_TRUNCATED, 1, 1);
        reply.extend(question("kafka.example.com", 1));
        let err = decode_reply(&reply, 4, "kafka.example.com", QueryType::A).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[tokio::test]
    async fn resolve_finds_localhost_in_the_hosts_text() {
        let hosts = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n";
        let addresses = resolve_with("localhost:1234", hosts, &[]).await.unwrap();
        assert_eq!(addresses, [socket("127.0.0.1:1234"), socket("[::1]:1234")]);
    }

    #[tokio::test]
    async fn resolve_returns_ip_literals_as_they_are() {
        let hosts = "10.9.9.9 127.0.0.2\n";
        assert_eq!(resolve_with("127.0.0.2:9092", hosts, &[]).await.unwrap(), [socket("127.0.0.2:9092")]);
        assert_eq!(resolve_with("[::1]:9092", hosts, &[]).await.unwrap(), [socket("[::1]:9092")]);
    }

    #[tokio::test]
    async fn resolve_fails_with_the_host_and_what_to_check() {
        let err = resolve_with("kafka:9092", "", &[]).await.unwrap_err();
        assert!(matches!(&err, Error::Resolve { host, .. } if host == "kafka"), "{err:?}");
        assert!(err.is_retriable());
        let err = resolve_with("bad..name:9092", "", &[]).await.unwrap_err();
        assert!(err.to_string().contains("bad..name"), "{err}");
    }

    #[test]
    fn search_domains_complete_names_as_glibc_does() {
        let conf = "nameserver 10.0.0.10\nsearch ns.svc.cluster.local svc.cluster.local.\noptions ndots:5 timeout:2\n";
        let (search, ndots) = parse_search(conf);
        assert_eq!(search, ["ns.svc.cluster.local", "svc.cluster.local"]);
        assert_eq!(ndots, 5);
        // Fewer dots than ndots: the search domains first.
        assert_eq!(
            candidates("kafka-0.kafka-brokers", &search, ndots),
            [
                "kafka-0.kafka-brokers.ns.svc.cluster.local",
                "kafka-0.kafka-brokers.svc.cluster.local",
                "kafka-0.kafka-brokers"
            ]
        );
        // Enough dots: as given first; a trailing dot: only as given.
        assert_eq!(candidates("a.b.c.d.e.f", &search, ndots)[0], "a.b.c.d.e.f");
        assert_eq!(candidates("kafka.example.com.", &search, ndots), ["kafka.example.com"]);
        assert_eq!(parse_search("domain example.com\n"), (vec!["example.com".to_owned()], 1));
        assert_eq!(candidates("kafka", &[], 1), ["kafka"]);
    }

    /// A UDP nameserver on loopback sending, for each query, the datagrams `answer` makes of it.
    async fn serve(answer: impl Fn(&[u8]) -> Vec<Vec<u8>> + Send + 'static) -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buffer = [0u8; 512];
            loop {
                let (length, peer) = socket.recv_from(&mut buffer).await.unwrap();
                for datagram in answer(&buffer[..length]) {
                    socket.send_to(&datagram, peer).await.unwrap();
                }
            }
        });
        local
    }

    /// A nameserver that knows one name's IPv4 address and no IPv6 one, and sends a forged reply
    /// (another id) before each true one.
    async fn nameserver(known: &'static str, address: Ipv4Addr) -> SocketAddr {
        serve(move |query| {
            let length = query.len();
            let query_type = u16::from_be_bytes([query[length - 4], query[length - 3]]);
            let asked = String::from_utf8_lossy(&query[12..length - 4]).to_lowercase();
            let mut reply = query.to_vec();
            reply[2..4].copy_from_slice(&RESPONSE.to_be_bytes());
            if !asked.contains(known) {
                reply[3] |= RCODE_NAME_ERROR as u8;
            } else if query_type == 1 {
                reply[7] = 1;
                reply.extend(record(&TO_QUESTION, 1, &address.octets()));
            }
            let mut forged = reply.clone();
            forged[0] ^= 0xff;
            vec![forged, reply]
        })
        .await
    }

    /// A nameserver that answers everything with SERVFAIL.
    async fn failing_nameserver() -> SocketAddr {
        serve(|query| {
            let mut reply = query.to_vec();
            reply[2..4].copy_from_slice(&(RESPONSE | 2).to_be_bytes());
            vec![reply]
        })
        .await
    }

    #[tokio::test]
    async fn resolve_asks_a_nameserver_over_udp() {
        let server = nameserver("kafka", Ipv4Addr::new(10, 1, 2, 3)).await;
        let addresses = resolve_with("kafka.test:9092", "127.0.0.1 localhost\n", &[server]).await.unwrap();
        assert_eq!(addresses, [socket("10.1.2.3:9092")]);
        let err = resolve_with("zookeeper.test:2181", "", &[server]).await.unwrap_err();
        assert!(err.to_string().contains("neither /etc/hosts nor DNS knows"), "{err}");
    }

    #[tokio::test]
    async fn resolve_asks_the_next_nameserver_when_one_fails() {
        let servers = [failing_nameserver().await, nameserver("kafka", Ipv4Addr::new(10, 1, 2, 4)).await];
        let addresses = resolve_with("kafka.test:9092", "", &servers).await.unwrap();
        assert_eq!(addresses, [socket("10.1.2.4:9092")]);
        let err = resolve_with("kafka.test:9092", "", &servers[..1]).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("kafka.test") && text.contains("SERVFAIL") && text.contains(&servers[0].to_string()),
            "{text}"
        );
    }

    #[tokio::test]
    async fn resolve_prefers_the_hosts_text_to_dns() {
        let server = nameserver("kafka", Ipv4Addr::new(10, 1, 2, 3)).await;
        let addresses = resolve_with("kafka.test:9092", "10.9.9.9 KAFKA.test\n", &[server]).await.unwrap();
        assert_eq!(addresses, [socket("10.9.9.9:9092")]);
    }
}

#[cfg(test)]
mod examples {
    #[test]
    fn split_host_port_example() {
        use super::*;
        assert_eq!(split_host_port("localhost:9092").unwrap(), ("localhost", 9092));
        assert_eq!(split_host_port("[::1]:9092").unwrap(), ("::1", 9092));
        assert!(split_host_port("localhost").is_err());
    }

    #[test]
    fn parse_hosts_example() {
        use super::*;
        use std::net::IpAddr;
        let hosts = "::1 localhost ip6-localhost\n127.0.0.1 localhost # loopback\n";
        let expected: [IpAddr; 2] = ["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        assert_eq!(parse_hosts(hosts, "LocalHost"), expected);
    }

    #[test]
    fn parse_resolv_conf_example() {
        use super::*;
        use std::net::SocketAddr;
        let servers = parse_resolv_conf("search example.com\nnameserver 10.0.0.2\n");
        assert_eq!(servers, ["10.0.0.2:53".parse::<SocketAddr>().unwrap()]);
        assert_eq!(parse_resolv_conf(""), ["127.0.0.1:53".parse::<SocketAddr>().unwrap()]);
    }

    #[test]
    fn encode_query_example() {
        use super::*;
        let query = encode_query(0x1234, "kafka", QueryType::A).unwrap();
        assert_eq!(query, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05kafka\x00\x00\x01\x00\x01");
    }
}
