//! Finding a broker's addresses, also where the C library cannot.
//!
//! The `sluice` binary is linked statically, and a static glibc cannot load the NSS modules its
//! `getaddrinfo` relies on, so in an empty container (`FROM scratch`) it cannot even resolve
//! `localhost`. With the `resolver` feature (on by default) [`resolve`] asks
//! [hickory-resolver](https://docs.rs/hickory-resolver) instead, in Rust, which does what glibc's
//! default `hosts: files dns` does:
//!
//! 1. an IP literal (`127.0.0.1:9092`, `[::1]:9092`) is used as is;
//! 2. otherwise the name is looked up in `/etc/hosts`;
//! 3. otherwise the nameservers of `/etc/resolv.conf` are asked for its A and AAAA records, over
//!    UDP and, when a reply is truncated, over TCP; its `search`/`domain` list, `ndots`,
//!    `timeout` and `attempts` are honoured. Without the file (or without a `nameserver` line)
//!    `127.0.0.1:53` is asked, as glibc does.
//!
//! Answers are cached for their TTL. Each tokio runtime has one resolver, made at its first
//! lookup: the two files are read then, not at every connect (a process rarely has more than one
//! runtime; the last few runtimes' resolvers are kept). Addresses come IPv4 first, then IPv6.
//!
//! In a build that is not statically linked, a name this finds nowhere is then asked of the C
//! library too (NSS: LDAP, split DNS and the like); a static glibc build must not, as its NSS
//! modules would have to match the glibc it was built with. Without the `resolver` feature every
//! name is asked of the C library, through `tokio::net::lookup_host`.

use std::net::{IpAddr, SocketAddr};

use crate::error::{Error, Result};

/// The addresses of `host_port` (`host:port`, or `[ipv6]:port`), IPv4 ones first: the IP itself
/// if the host is a literal, else what `/etc/hosts` and DNS say (see the module docs above for
/// what is and is not honoured).
///
/// Never returns an empty list. Fails with [`Error::InvalidAddress`] if `host_port` is not
/// `host:port`, and with [`Error::Resolve`] if the name has no address or no nameserver answered.
///
/// ```no_run
/// # async fn run() -> sluice_client::Result<()> {
/// let addresses = sluice_client::resolve("localhost:9092").await?;
/// assert!(addresses.iter().all(|address| address.port() == 9092));
/// # Ok(()) }
/// ```
///
/// # Cancel safety
///
/// Cancel safe: dropping the future drops its queries, and replies to them are ignored. A
/// lookup in the C library already under way runs to its end on a blocking thread. Calling
/// again is fine.
pub async fn resolve(host_port: &str) -> Result<Vec<SocketAddr>> {
    let (host, port) = split_host_port(host_port)?;
    // A literal needs neither file; the container may not have them.
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    #[cfg(feature = "resolver")]
    let found = match with_hickory::lookup(&with_hickory::resolver(host)?, host).await {
        Ok(found) => found,
        // The C library may know more (NSS) where it can be asked.
        #[cfg(not(target_feature = "crt-static"))]
        Err(error) => c_library(host_port).await.map_err(|_| error)?,
        #[cfg(target_feature = "crt-static")]
        Err(error) => return Err(error),
    };
    #[cfg(not(feature = "resolver"))]
    let found = c_library(host_port).await.map_err(|reason| Error::Resolve { host: host.to_owned(), reason })?;
    Ok(ipv4_first(found.into_iter().map(|ip| SocketAddr::new(ip, port)).collect()))
}

/// What the C library's `getaddrinfo` says of `host_port`, on a blocking thread.
#[cfg(any(not(feature = "resolver"), not(target_feature = "crt-static")))]
async fn c_library(host_port: &str) -> std::result::Result<Vec<IpAddr>, String> {
    let found: Vec<IpAddr> =
        tokio::net::lookup_host(host_port).await.map_err(|e| e.to_string())?.map(|address| address.ip()).collect();
    if found.is_empty() {
        return Err("the name has no address".into());
    }
    Ok(found)
}

#[cfg(feature = "resolver")]
mod with_hickory {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::{Mutex, PoisonError};

    use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    use hickory_resolver::TokioResolver;

    use crate::error::{Error, Result};

    /// Resolvers kept, one per runtime, the newest last.
    const RUNTIMES_KEPT: usize = 4;

    /// This runtime's resolver. A resolver's connections to the nameservers are tasks of the
    /// runtime that made them, so it is not shared between runtimes.
    pub(super) fn resolver(host: &str) -> Result<TokioResolver> {
        static RESOLVERS: Mutex<Vec<(tokio::runtime::Id, TokioResolver)>> = Mutex::new(Vec::new());
        let runtime = tokio::runtime::Handle::current().id();
        let mut resolvers = RESOLVERS.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, resolver)) = resolvers.iter().find(|(id, _)| *id == runtime) {
            return Ok(resolver.clone());
        }
        let resolver = system_resolver().map_err(|reason| Error::Resolve { host: host.to_owned(), reason })?;
        if resolvers.len() == RUNTIMES_KEPT {
            resolvers.remove(0);
        }
        resolvers.push((runtime, resolver.clone()));
        Ok(resolver)
    }

    /// A resolver configured from `/etc/resolv.conf` (or asking `127.0.0.1:53` without it, as
    /// glibc does), looking in `/etc/hosts` first.
    fn system_resolver() -> std::result::Result<TokioResolver, String> {
        let (config, options) = hickory_resolver::system_conf::read_system_conf().unwrap_or_else(|_| {
            let localhost = NameServerConfig::udp_and_tcp(IpAddr::V4(Ipv4Addr::LOCALHOST));
            (ResolverConfig::from_name_servers(vec![localhost]), ResolverOpts::default())
        });
        build(config, options)
    }

    pub(super) fn build(
        config: ResolverConfig,
        mut options: ResolverOpts,
    ) -> std::result::Result<TokioResolver, String> {
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.use_hosts_file = ResolveHosts::Always;
        let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        *builder.options_mut() = options;
        builder.build().map_err(|e| format!("cannot set up the resolver: {e}"))
    }

    /// The addresses `resolver` finds for `host`.
    pub(super) async fn lookup(resolver: &TokioResolver, host: &str) -> Result<Vec<IpAddr>> {
        let reason = match resolver.lookup_ip(host).await {
            Ok(found) if found.iter().next().is_some() => return Ok(found.iter().collect()),
            Err(e) if !(e.is_no_records_found() || e.is_nx_domain()) => format!("no nameserver answered: {e}"),
            _ => "neither /etc/hosts nor DNS knows the name, nor the name completed with the search domains \
                  of /etc/resolv.conf (check its spelling; a broker's own name comes from its advertised \
                  listeners)"
                .to_owned(),
        };
        Err(Error::Resolve { host: host.to_owned(), reason })
    }
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

/// `addresses`, IPv4 ones first, each once, otherwise in their order.
fn ipv4_first(mut addresses: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let mut seen = Vec::with_capacity(addresses.len());
    addresses.retain(|address| {
        let first = !seen.contains(address);
        seen.push(*address);
        first
    });
    addresses.sort_by_key(SocketAddr::is_ipv6);
    addresses
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket(text: &str) -> SocketAddr {
        text.parse().unwrap()
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
    fn addresses_come_ipv4_first_each_once() {
        let addresses = vec![socket("[::1]:1"), socket("10.0.0.2:1"), socket("[::1]:1"), socket("10.0.0.1:1")];
        assert_eq!(ipv4_first(addresses), [socket("10.0.0.2:1"), socket("10.0.0.1:1"), socket("[::1]:1")]);
    }

    #[tokio::test]
    async fn resolve_takes_literals_as_they_are_and_finds_localhost() {
        assert_eq!(resolve("10.1.2.3:9092").await.unwrap(), [socket("10.1.2.3:9092")]);
        assert_eq!(resolve("[::1]:9092").await.unwrap(), [socket("[::1]:9092")]);
        let local = resolve("localhost:9092").await.unwrap();
        assert!(!local.is_empty() && local.iter().all(|a| a.ip().is_loopback() && a.port() == 9092), "{local:?}");
    }

    #[cfg(feature = "resolver")]
    mod dns {
        use std::net::Ipv4Addr;
        use std::time::Duration;

        use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
        use hickory_resolver::proto::op::{Message, ResponseCode};
        use hickory_resolver::proto::rr::{rdata, RData, Record, RecordType};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::{TcpListener, UdpSocket};

        use super::super::with_hickory::{build, lookup};
        use crate::error::Error;

        /// The addresses of the names the test nameserver knows: `kafka.test` has one IPv4
        /// address; `many.test` has more than fit a UDP reply, so that reply is truncated and
        /// the whole answer comes over TCP.
        fn answer(query: &[u8], over_tcp: bool) -> Vec<u8> {
            let query = Message::from_vec(query).unwrap();
            let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
            reply.metadata.recursion_desired = true;
            reply.metadata.recursion_available = true;
            let question = query.queries[0].clone();
            let name = question.name().to_ascii().to_lowercase();
            let addresses: Vec<Ipv4Addr> = match name.as_str() {
                "kafka.test." => vec![Ipv4Addr::new(10, 1, 2, 3)],
                "many.test." => (0..200).map(|i| Ipv4Addr::new(10, 2, 0, i)).collect(),
                _ => {
                    reply.metadata.response_code = ResponseCode::NXDomain;
                    Vec::new()
                }
            };
            reply.add_query(question.clone());
            if question.query_type() == RecordType::A {
                if addresses.len() > 20 && !over_tcp {
                    reply.metadata.truncation = true;
                } else {
                    for address in addresses {
                        reply.add_answer(Record::from_rdata(question.name().clone(), 60, RData::A(rdata::A(address))));
                    }
                }
            }
            reply.to_vec().unwrap()
        }

        /// A nameserver on loopback answering over UDP and TCP on one port.
        async fn nameserver() -> u16 {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let port = udp.local_addr().unwrap().port();
            let tcp = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
            tokio::spawn(async move {
                let mut buffer = [0u8; 512];
                loop {
                    let (length, peer) = udp.recv_from(&mut buffer).await.unwrap();
                    udp.send_to(&answer(&buffer[..length], false), peer).await.unwrap();
                }
            });
            tokio::spawn(async move {
                loop {
                    let (mut stream, _) = tcp.accept().await.unwrap();
                    tokio::spawn(async move {
                        let mut length = [0u8; 2];
                        while stream.read_exact(&mut length).await.is_ok() {
                            let mut query = vec![0u8; usize::from(u16::from_be_bytes(length))];
                            stream.read_exact(&mut query).await.unwrap();
                            let reply = answer(&query, true);
                            stream.write_all(&u16::try_from(reply.len()).unwrap().to_be_bytes()).await.unwrap();
                            stream.write_all(&reply).await.unwrap();
                        }
                    });
                }
            });
            port
        }

        fn resolver_for(port: u16) -> hickory_resolver::TokioResolver {
            let mut udp = ConnectionConfig::udp();
            udp.port = port;
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = port;
            let server = NameServerConfig::new(Ipv4Addr::LOCALHOST.into(), true, vec![udp, tcp]);
            let mut options = ResolverOpts::default();
            options.timeout = Duration::from_secs(2);
            options.attempts = 1;
            build(ResolverConfig::from_name_servers(vec![server]), options).unwrap()
        }

        #[tokio::test]
        async fn resolve_asks_the_nameserver_and_retries_a_truncated_reply_over_tcp() {
            let resolver = resolver_for(nameserver().await);
            let found = lookup(&resolver, "kafka.test.").await.unwrap();
            assert_eq!(found, [std::net::IpAddr::from(Ipv4Addr::new(10, 1, 2, 3))]);
            let found = lookup(&resolver, "many.test.").await.unwrap();
            assert_eq!(found.len(), 200, "the whole answer, over TCP");
            let err = lookup(&resolver, "zookeeper.test.").await.unwrap_err();
            assert!(matches!(&err, Error::Resolve { host, .. } if host == "zookeeper.test."), "{err:?}");
            assert!(err.to_string().contains("neither /etc/hosts nor DNS knows"), "{err}");
            assert!(err.is_retriable());
        }

        #[tokio::test]
        async fn resolve_says_when_no_nameserver_answered() {
            // A UDP port nobody reads from, and no TCP listener on it.
            let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let resolver = resolver_for(silent.local_addr().unwrap().port());
            let err = lookup(&resolver, "kafka.test.").await.unwrap_err();
            assert!(err.to_string().contains("no nameserver answered"), "{err}");
            drop(silent);
        }
    }
}
