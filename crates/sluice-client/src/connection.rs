//! One TCP connection to one broker, with many requests in flight.
//!
//! A writer task owns the socket's write half and sends frames in the order requests were
//! issued, coalescing whatever is queued into one flush; a reader task owns the read half, splits
//! the stream into frames and hands each response to the request with the same correlation id.
//! Responses are decoded by the caller, not on the reader task, so decoding large fetches runs in
//! parallel with reading the next one. A dropped or timed-out request forgets its correlation id;
//! its late response is discarded. When the socket fails, every request in flight fails with
//! [`Error::Disconnected`] and the connection refuses new ones.
//!
//! On connect the client asks the broker which API versions it speaks (ApiVersions, KIP-511;
//! v3 first, falling back to v0 for brokers that refuse it) and from then on sends each request
//! at the highest version both sides implement.
//!
//! With SASL, the connection logs in after ApiVersions. When the broker gives the login a session
//! lifetime (`connections.max.reauth.ms`, KIP-368), the writer logs in again on the same socket
//! between 85 % and 95 % of it: it stops taking queued requests, sends the handshake and tokens,
//! waits for their answers and goes on (answers to earlier requests still arrive meanwhile). A
//! failed re-login closes the connection; the next request makes a new one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sluice_protocol::error_code::ErrorCode;
use sluice_protocol::frame::{FrameDecoder, DEFAULT_MAX_FRAME_BYTES};
use sluice_protocol::header::{decode_response, encode_request, peek_correlation_id};
#[cfg(feature = "sasl")]
use sluice_protocol::messages::SaslAuthenticateRequest;
use sluice_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse, Message, Request};
use sluice_protocol::DecodeError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::resolve::resolve;
#[cfg(feature = "sasl")]
use crate::sasl::{Login, SaslConfig};
#[cfg(feature = "tls")]
use crate::tls::TlsConfig;

mod login;
use login::{relogin, Relogin};

/// How a connection behaves.
///
/// Fields may be added in later versions (`#[non_exhaustive]`): start from [`Default`] and set the
/// fields you need.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionConfig {
    /// Sent in every request header; brokers log it and use it for quotas.
    pub client_id: Option<String>,
    /// How long to wait for the TCP connection.
    pub connect_timeout: Duration,
    /// How long to wait for each response. A request that outlives it closes its connection,
    /// which may be half-open (the broker gone without a word); the next request makes a new one.
    pub request_timeout: Duration,
    /// Idle time before TCP keepalive probes start (then every 10 s, at most 3 unanswered on
    /// Linux), so that a connection whose peer vanished is noticed while no request waits on it.
    /// `None` leaves keepalive off.
    pub keepalive: Option<Duration>,
    /// Most frames queued for the writer; further requests wait (backpressure).
    pub max_queued_requests: usize,
    /// Largest response frame accepted.
    pub max_frame_bytes: usize,
    /// Encrypt connections with TLS (`None`: plaintext). Feature `tls`.
    #[cfg(feature = "tls")]
    pub tls: Option<TlsConfig>,
    /// Authenticate every connection with SASL (`None`: no authentication). Feature `sasl`.
    #[cfg(feature = "sasl")]
    pub sasl: Option<SaslConfig>,
    /// Told how long each request took (for metrics; `None`: nobody).
    pub observer: Option<Arc<dyn RequestObserver>>,
}

/// Told of every request a connection finishes, answered or not: its latency from being queued
/// to its answer decoded (or its failure), as the Java client's `request-latency` metrics do.
/// Called on the task awaiting the answer: keep it quick (a histogram observation).
pub trait RequestObserver: Send + Sync + std::fmt::Debug {
    /// `api` (`"Produce"`, `"Fetch"`, ...) to `broker` took `elapsed`; `ok` is false when it
    /// failed (timed out, the connection lost, an undecodable answer).
    fn request_done(&self, broker: &str, api: &'static str, elapsed: Duration, ok: bool);
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            client_id: Some("sluice".into()),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            keepalive: Some(Duration::from_secs(60)),
            max_queued_requests: 256,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "sasl")]
            sasl: None,
            observer: None,
        }
    }
}

/// What the broker said about an API: its lowest and highest version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionRange {
    /// Lowest version the broker accepts.
    pub min: i16,
    /// Highest version the broker accepts.
    pub max: i16,
}

/// Why a connection closed.
#[derive(Debug, Clone)]
enum Closed {
    /// The socket failed or the broker hung up: reconnecting may help.
    Lost(String),
    /// The broker sent a frame over `max_frame_bytes`: the same request would get it again.
    FrameTooLarge { size: i64, max: usize },
}

type Reply = std::result::Result<Bytes, Closed>;

/// State shared by the connection handle and its reader and writer tasks.
#[derive(Debug, Default)]
struct Shared {
    /// The broker's address, for the events this connection reports.
    broker: String,
    pending: Mutex<HashMap<i32, oneshot::Sender<Reply>>>,
    /// Why the connection closed, once it has.
    closed: Mutex<Option<Closed>>,
    /// The reader and writer tasks, stopped (and the socket with them) when the connection closes
    /// or its handle is dropped.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Until when the broker asked this client to send nothing more (a quota's throttle time,
    /// KIP-219): the writer holds further requests until then.
    throttled_until: Mutex<Option<tokio::time::Instant>>,
    next_correlation_id: AtomicI32,
    /// What the writer needs to log in again before the SASL session ends (KIP-368).
    relogin: Mutex<Option<Relogin>>,
    /// Wakes the writer when the first login hands it a session to renew.
    relogin_scheduled: tokio::sync::Notify,
    /// How many times the connection logged in again.
    relogins: AtomicU64,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<i32, oneshot::Sender<Reply>>> {
        // A panic while holding the lock cannot leave the map inconsistent: keep using it.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn closed_reason(&self) -> Option<Closed> {
        self.closed.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Marks the connection closed and fails every request in flight.
    fn close(&self, reason: Closed) {
        let mut closed = self.closed.lock().unwrap_or_else(PoisonError::into_inner);
        if closed.is_none() {
            match &reason {
                Closed::Lost(why) => tracing::info!(broker = %self.broker, reason = %why, "connection closed"),
                Closed::FrameTooLarge { size, max } => {
                    tracing::warn!(broker = %self.broker, size, max, "connection closed: a response larger than allowed");
                }
            }
            *closed = Some(reason.clone());
        }
        drop(closed);
        for (_, waiter) in self.pending().drain() {
            // A waiter gone is a request whose future was dropped: nobody is left to tell.
            waiter.send(Err(reason.clone())).ok();
        }
        self.stop_tasks();
    }

    fn next_correlation_id(&self) -> i32 {
        self.next_correlation_id.fetch_add(1, Ordering::Relaxed) & i32::MAX
    }

    fn relogin_due(&self) -> Option<tokio::time::Instant> {
        self.relogin.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(Relogin::due_at)
    }

    fn throttled_until(&self) -> Option<tokio::time::Instant> {
        *self.throttled_until.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stop_tasks(&self) {
        for task in self.tasks.lock().unwrap_or_else(PoisonError::into_inner).drain(..) {
            task.abort();
        }
    }
}

/// Forgets a request's correlation id when its caller stops waiting (done, timed out or
/// dropped), so a late response is discarded rather than kept.
#[derive(Debug)]
struct PendingGuard {
    shared: Arc<Shared>,
    correlation_id: i32,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.shared.pending().remove(&self.correlation_id);
    }
}

/// A request handed to the connection's writer, whose response has not been read yet. Requests
/// enqueued one after another on a connection reach the broker in that order.
#[derive(Debug)]
pub struct InFlight<R> {
    broker: String,
    api: &'static str,
    version: i16,
    timeout: Duration,
    deadline: tokio::time::Instant,
    response: oneshot::Receiver<Reply>,
    /// When it was queued, and who is told how long it took.
    observed: Option<(tokio::time::Instant, Arc<dyn RequestObserver>)>,
    _guard: PendingGuard,
    _request: std::marker::PhantomData<fn() -> R>,
}

impl<R: Request> InFlight<R> {
    /// Waits for and decodes the response, within what is left of the request timeout.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future forgets the request, so its late response is discarded and
    /// the connection stays usable. The request was already handed to the writer, and the broker may
    /// still act on it. Unlike a timeout, a dropped wait neither closes the connection nor tells the
    /// observer.
    pub async fn response(self) -> Result<R::Response> {
        let Self { broker, api, version, timeout, deadline, response, observed, _guard, .. } = self;
        let observed = observed.map(|(started, observer)| (started, observer, broker.clone()));
        let span = tracing::debug_span!("request", broker = %broker, api, version);
        let answer =
            tracing::Instrument::instrument(receive::<R>(broker, api, version, (timeout, deadline), response), span)
                .await;
        if let Some((started, observer, broker)) = observed {
            observer.request_done(&broker, api, started.elapsed(), answer.is_ok());
        }
        if matches!(answer, Err(Error::RequestTimeout { .. })) {
            _guard.shared.close(timed_out(api, version, timeout));
        }
        answer
    }
}

/// Waits until `deadline` (the end of the request's `timeout`) for the answer to `api` v`version`
/// and decodes it; no answer by then is [`Error::RequestTimeout`].
async fn receive<R: Request>(
    broker: String,
    api: &'static str,
    version: i16,
    (timeout, deadline): (Duration, tokio::time::Instant),
    response: oneshot::Receiver<Reply>,
) -> Result<R::Response> {
    let body = match tokio::time::timeout_at(deadline, response).await {
        Err(_) => return Err(Error::RequestTimeout { broker, api, version, timeout }),
        Ok(Err(_)) => return Err(closed_error(broker, Closed::Lost("the connection shut down".into()))),
        Ok(Ok(Err(reason))) => return Err(closed_error(broker, reason)),
        Ok(Ok(Ok(body))) => body,
    };
    let (_, response) =
        decode_response::<R>(body, version).map_err(|source| Error::Decode { broker, api, version, source })?;
    Ok(response)
}

/// Why a connection closed after a request went unanswered: the peer may be gone (a half-open
/// connection answers nothing), so nothing else is sent on it.
fn timed_out(api: &str, version: i16, timeout: Duration) -> Closed {
    Closed::Lost(format!("no answer to {api} v{version} within {timeout:?}; the connection was closed"))
}

fn closed_error(broker: String, reason: Closed) -> Error {
    match reason {
        Closed::Lost(reason) => Error::Disconnected { broker, reason },
        Closed::FrameTooLarge { size, max } => Error::ResponseTooLarge { broker, size, max },
    }
}

/// A connection to one broker.
#[derive(Debug)]
pub struct Connection {
    broker: String,
    config: ConnectionConfig,
    shared: Arc<Shared>,
    writer: mpsc::Sender<Bytes>,
    versions: HashMap<i16, VersionRange>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.stop_tasks();
    }
}

/// Connects to the first of `addresses` that accepts, in order; fails with the last refusal.
async fn connect_first(broker: &str, addresses: &[SocketAddr]) -> Result<TcpStream> {
    let mut last_error = None;
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => return Ok(stream),
            Err(source) => last_error = Some(source),
        }
    }
    let source = last_error.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address to try"));
    Err(Error::Connect { broker: broker.to_owned(), source: Arc::new(source) })
}

impl Connection {
    /// Connects to `broker` (`host:port`) and negotiates API versions.
    ///
    /// The host is resolved by [`resolve`](crate::resolve) (`/etc/hosts` then DNS, in Rust with the
    /// `resolver` feature: a static binary cannot load glibc's NSS), and its addresses are tried in order
    /// until one accepts; resolving and connecting share the connect timeout.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future closes the socket and stops the reader and writer tasks if
    /// they were started; nothing is kept. Calling again makes a new connection.
    pub async fn connect(broker: &str, config: ConnectionConfig) -> Result<Self> {
        #[cfg(feature = "tls")]
        let tls = config.tls.clone();
        #[cfg(not(feature = "tls"))]
        let tls: Option<std::convert::Infallible> = None;
        #[cfg(feature = "sasl")]
        if let Some(reason) = config.sasl.as_ref().filter(|_| tls.is_none()).and_then(SaslConfig::refusal_without_tls) {
            return Err(Error::Authentication { broker: broker.to_owned(), mechanism: "PLAIN", reason });
        }
        let resolve_and_connect = async {
            let addresses = resolve(broker).await?;
            connect_first(broker, &addresses).await
        };
        let stream = match tokio::time::timeout(config.connect_timeout, resolve_and_connect).await {
            Ok(stream) => stream?,
            Err(_) => return Err(Error::ConnectTimeout { broker: broker.to_owned(), timeout: config.connect_timeout }),
        };
        // Requests are small and latency matters more than packet count.
        // Both are tuning: a socket without them still works, so a refusal is only reported.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(broker, %error, "TCP_NODELAY not set");
        }
        if let Some(idle) = config.keepalive {
            let keepalive = socket2::TcpKeepalive::new().with_time(idle);
            #[cfg(target_os = "linux")]
            let keepalive = keepalive.with_interval(Duration::from_secs(10)).with_retries(3);
            if let Err(error) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
                tracing::debug!(broker, %error, "TCP keepalive not set");
            }
        }
        let shared = Arc::new(Shared { broker: broker.to_owned(), ..Shared::default() });
        let (writer, queue) = mpsc::channel(config.max_queued_requests.max(1));
        let decoder = FrameDecoder::new(config.max_frame_bytes);
        let tasks = match tls {
            None => {
                let (read, write) = stream.into_split();
                [
                    tokio::spawn(read_loop(read, Arc::clone(&shared), decoder)),
                    tokio::spawn(write_loop(write, queue, Arc::clone(&shared))),
                ]
            }
            #[cfg(not(feature = "tls"))]
            Some(never) => match never {},
            #[cfg(feature = "tls")]
            Some(tls) => {
                let handshake = tls.handshake(broker, stream);
                let stream = match tokio::time::timeout(config.connect_timeout, handshake).await {
                    Ok(stream) => stream?,
                    Err(_) => {
                        let timeout = config.connect_timeout;
                        return Err(Error::ConnectTimeout { broker: broker.to_owned(), timeout });
                    }
                };
                let (read, write) = tokio::io::split(stream);
                [
                    tokio::spawn(read_loop(read, Arc::clone(&shared), decoder)),
                    tokio::spawn(write_loop(write, queue, Arc::clone(&shared))),
                ]
            }
        };
        *shared.tasks.lock().unwrap_or_else(PoisonError::into_inner) =
            tasks.iter().map(JoinHandle::abort_handle).collect();
        let mut connection = Self { broker: broker.to_owned(), config, shared, writer, versions: HashMap::new() };
        connection.versions = connection.negotiate_versions().await?;
        #[cfg(feature = "sasl")]
        if let Some(sasl) = connection.config.sasl.clone() {
            connection.log_in(sasl).await?;
        }
        Ok(connection)
    }

    /// How many times the connection logged in again because its SASL session was ending.
    pub fn relogins(&self) -> u64 {
        self.shared.relogins.load(Ordering::Relaxed)
    }

    /// The broker's address.
    pub fn broker(&self) -> &str {
        &self.broker
    }

    /// How many requests are waiting for their responses.
    pub fn in_flight(&self) -> usize {
        self.shared.pending().len()
    }

    /// Whether the connection has failed or been closed by the broker.
    pub fn is_closed(&self) -> bool {
        self.shared.closed_reason().is_some()
    }

    /// The versions the broker offers for `api_key`, if it offers the API at all.
    pub fn broker_versions(&self, api_key: i16) -> Option<VersionRange> {
        self.versions.get(&api_key).copied()
    }

    /// The version `R` is sent at: the highest both sides implement, at most `cap`.
    pub fn version_for<R: Request>(&self, cap: Option<i16>) -> Result<i16> {
        let broker = self.broker_versions(R::API_KEY);
        let (broker_min, broker_max) = broker.map_or((-1, -1), |v| (v.min, v.max));
        let client_max = cap.map_or(R::MAX_VERSION, |c| c.min(R::MAX_VERSION));
        let version = client_max.min(broker_max);
        if broker.is_none() || version < R::MIN_VERSION.max(broker_min) {
            return Err(Error::UnsupportedVersion {
                broker: self.broker.clone(),
                api: api_name::<R>(),
                broker_min,
                broker_max,
                client_min: R::MIN_VERSION,
                client_max,
            });
        }
        Ok(version)
    }

    /// Sends `request` at the highest version both sides implement and waits for the response.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the connection stays usable, and the response, should it come, is discarded. If
    /// the request was already queued, the writer still sends it and the broker may act on it; calling
    /// again sends it a second time.
    pub async fn send<R: Request>(&self, request: &R) -> Result<R::Response> {
        let version = self.version_for::<R>(None)?;
        self.send_version(request, version).await
    }

    /// Sends `request` at `version` and waits for the response. The request timeout covers
    /// both waiting for room in the send queue and waiting for the answer.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the connection stays usable, and the response, should it come, is discarded. If
    /// the request was already queued, the writer still sends it and the broker may act on it; calling
    /// again sends it a second time.
    pub async fn send_version<R: Request>(&self, request: &R, version: i16) -> Result<R::Response> {
        self.enqueue(request, version).await?.response().await
    }

    /// Like [`Connection::send_version`], with its own timeout in place of the configured one:
    /// for requests the broker may hold on purpose for longer, such as JoinGroup (which waits
    /// for the whole group to rejoin).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the connection stays usable, and the response, should it come, is discarded. If
    /// the request was already queued, the writer still sends it and the broker may act on it; calling
    /// again sends it a second time.
    pub async fn send_version_within<R: Request>(
        &self,
        request: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response> {
        self.enqueue_within(request, version, timeout).await?.response().await
    }

    /// Hands `request` to the writer (waiting for room in the send queue) and returns without
    /// waiting for the response, so that several requests can be pipelined in a known order.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the frame is queued in the step that completes the future, so a dropped call has
    /// queued nothing and the connection stays usable. Dropping the returned [`InFlight`] instead
    /// leaves the request to be sent and its response discarded.
    pub async fn enqueue<R: Request>(&self, request: &R, version: i16) -> Result<InFlight<R>> {
        self.enqueue_within(request, version, self.config.request_timeout).await
    }

    async fn enqueue_within<R: Request>(&self, request: &R, version: i16, timeout: Duration) -> Result<InFlight<R>> {
        let api = api_name::<R>();
        let started = tokio::time::Instant::now();
        let deadline = started + timeout;
        let correlation_id = self.shared.next_correlation_id();
        let mut frame = BytesMut::new();
        encode_request(&mut frame, correlation_id, self.config.client_id.as_deref(), version, request)
            .map_err(|source| Error::Encode { broker: self.broker.clone(), api, version, source })?;

        let (reply, response) = oneshot::channel();
        self.shared.pending().insert(correlation_id, reply);
        let guard = PendingGuard { shared: Arc::clone(&self.shared), correlation_id };
        if let Some(reason) = self.shared.closed_reason() {
            return Err(self.closed_error(reason));
        }
        match tokio::time::timeout_at(deadline, self.writer.send(frame.freeze())).await {
            Err(_) => {
                self.shared.close(timed_out(api, version, timeout));
                return Err(Error::RequestTimeout { broker: self.broker.clone(), api, version, timeout });
            }
            Ok(Err(_)) => {
                let reason = self.shared.closed_reason().unwrap_or_else(|| Closed::Lost("the writer stopped".into()));
                return Err(self.closed_error(reason));
            }
            Ok(Ok(())) => {}
        }
        Ok(InFlight {
            broker: self.broker.clone(),
            api,
            version,
            timeout,
            deadline,
            response,
            observed: self.config.observer.as_ref().map(|observer| (started, Arc::clone(observer))),
            _guard: guard,
            _request: std::marker::PhantomData,
        })
    }

    /// Queues a request the broker does not answer (Produce with acks=0) and returns once it is
    /// handed to the writer.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the frame is queued in the step that completes the future, so a dropped call has
    /// sent nothing and the connection stays usable. Calling again is fine.
    pub async fn send_without_response<R: Request>(&self, request: &R, version: i16) -> Result<()> {
        let api = api_name::<R>();
        let correlation_id = self.shared.next_correlation_id();
        let mut frame = BytesMut::new();
        encode_request(&mut frame, correlation_id, self.config.client_id.as_deref(), version, request)
            .map_err(|source| Error::Encode { broker: self.broker.clone(), api, version, source })?;
        if let Some(reason) = self.shared.closed_reason() {
            return Err(self.closed_error(reason));
        }
        match tokio::time::timeout(self.config.request_timeout, self.writer.send(frame.freeze())).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => {
                let reason = self.shared.closed_reason().unwrap_or_else(|| Closed::Lost("the writer stopped".into()));
                Err(self.closed_error(reason))
            }
            Err(_) => {
                let timeout = self.config.request_timeout;
                self.shared.close(timed_out(api, version, timeout));
                Err(Error::RequestTimeout { broker: self.broker.clone(), api, version, timeout })
            }
        }
    }

    /// Honours a throttle time a broker sent with a response (`throttle_time_ms`, KIP-219: a
    /// client over its quota is answered at once and told how long to hold off): requests
    /// queued from now on are written once it has passed.
    pub fn throttle(&self, throttle_time_ms: i32) {
        let Ok(ms) = u64::try_from(throttle_time_ms) else { return };
        if ms == 0 {
            return;
        }
        let until = tokio::time::Instant::now() + Duration::from_millis(ms);
        let mut throttled = self.shared.throttled_until.lock().unwrap_or_else(PoisonError::into_inner);
        *throttled = Some(throttled.map_or(until, |at| at.max(until)));
    }

    fn closed_error(&self, reason: Closed) -> Error {
        closed_error(self.broker.clone(), reason)
    }

    /// Asks the broker for its API versions: v3 (with our name and version, KIP-511), and v0 if
    /// the broker cannot answer that.
    async fn negotiate_versions(&self) -> Result<HashMap<i16, VersionRange>> {
        let request = ApiVersionsRequest {
            client_software_name: "sluice".into(),
            client_software_version: env!("CARGO_PKG_VERSION").into(),
            ..ApiVersionsRequest::default()
        };
        let response = match self.send_version(&request, 3).await {
            Ok(response) if ErrorCode::from_code(response.error_code) != ErrorCode::UnsupportedVersion => response,
            // An older broker answers an unknown version in v0 format with UNSUPPORTED_VERSION.
            Ok(_) | Err(Error::Decode { .. }) => self.send_version(&ApiVersionsRequest::default(), 0).await?,
            Err(other) => return Err(other),
        };
        check_error(&self.broker, ApiVersionsResponse::NAME, response.error_code)?;
        Ok(response
            .api_keys
            .iter()
            .map(|k| (k.api_key, VersionRange { min: k.min_version, max: k.max_version }))
            .collect())
    }
}

/// The API name of a request type, without the `Request` suffix.
fn api_name<R: Request>() -> &'static str {
    R::NAME.strip_suffix("Request").unwrap_or(R::NAME)
}

/// `Err(Error::Broker)` for a non-zero error code.
pub(crate) fn check_error(broker: &str, api: &'static str, code: i16) -> Result<()> {
    check_error_message(broker, api, code, None)
}

/// [`check_error`] with the message the broker gave with the code, if any
/// (`Error::BrokerMessage`).
pub(crate) fn check_error_message(broker: &str, api: &'static str, code: i16, message: Option<&str>) -> Result<()> {
    let broker = broker.to_owned();
    match (ErrorCode::from_code(code), message) {
        (ErrorCode::None, _) => Ok(()),
        (code, Some(message)) => Err(Error::BrokerMessage { broker, api, code, message: message.to_owned() }),
        (code, None) => Err(Error::Broker { broker, api, code }),
    }
}

async fn read_loop<R: AsyncRead + Unpin>(mut read: R, shared: Arc<Shared>, decoder: FrameDecoder) {
    let reason = read_frames(&mut read, &shared, decoder).await;
    shared.close(reason);
}

/// Reads and dispatches frames until the stream fails; returns why it stopped.
async fn read_frames<R: AsyncRead + Unpin>(read: &mut R, shared: &Shared, decoder: FrameDecoder) -> Closed {
    const READ_CHUNK: usize = 64 * 1024;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    if let Err(reason) = dispatch(shared, frame) {
                        return reason;
                    }
                }
                Ok(None) => break,
                Err(DecodeError::FrameTooLarge { size, max }) => return Closed::FrameTooLarge { size, max },
                Err(e) => return Closed::Lost(format!("bad frame from the broker: {e}")),
            }
        }
        buf.reserve(read_reserve(&decoder, &buf, READ_CHUNK, RESERVE_AHEAD));
        match read.read_buf(&mut buf).await {
            Ok(0) => return Closed::Lost("the broker closed the connection".into()),
            Ok(_) => {}
            Err(e) => return Closed::Lost(format!("read failed: {e}")),
        }
    }
}

/// Room made ahead of what has arrived of a frame, whatever its length prefix claims.
const RESERVE_AHEAD: usize = 1 << 20;

/// How much room to make before the next read, `buf` holding what has arrived of the next
/// frame: the rest of the frame if its size is known, but never more than `ahead` or what has
/// arrived already, whichever is larger (and at least one `chunk`), so the buffer grows with the
/// bytes that come rather than with what the length prefix claims. A peer that sends a prefix
/// of 100 MiB and nothing more gets `ahead`, not 100 MiB; a frame larger than `ahead` that does
/// arrive takes a few doubling reads.
fn read_reserve(decoder: &FrameDecoder, buf: &BytesMut, chunk: usize, ahead: usize) -> usize {
    match decoder.frame_len(buf) {
        Ok(Some(total)) => total.saturating_sub(buf.len()).min(buf.len().max(ahead)).max(chunk),
        _ => chunk,
    }
}

/// Hands a response to the request waiting for it.
fn dispatch(shared: &Shared, frame: Bytes) -> std::result::Result<(), Closed> {
    let correlation_id = peek_correlation_id(&frame)
        .map_err(|e| Closed::Lost(format!("the broker sent a frame too short for a response header: {e}")))?;
    // No waiter means the request timed out or was dropped: discard the late response.
    if let Some(waiter) = shared.pending().remove(&correlation_id) {
        // The request's future may have been dropped since: then the response goes unread.
        waiter.send(Ok(frame)).ok();
    }
    Ok(())
}

async fn write_loop<W: AsyncWrite + Unpin>(write: W, mut queue: mpsc::Receiver<Bytes>, shared: Arc<Shared>) {
    let mut out = BufWriter::with_capacity(64 * 1024, write);
    let written = |e: std::io::Error| Closed::Lost(format!("write failed: {e}"));
    let result: std::result::Result<(), Closed> = async {
        loop {
            let relogin_due = shared.relogin_due();
            let frame = tokio::select! {
                biased;
                () = sleep_until(relogin_due) => {
                    relogin(&mut out, &shared).await?;
                    continue;
                }
                () = shared.relogin_scheduled.notified() => continue,
                frame = queue.recv() => frame,
            };
            let Some(frame) = frame else { break };
            if let Some(until) = shared.throttled_until() {
                tokio::time::sleep_until(until).await;
            }
            out.write_all(&frame).await.map_err(written)?;
            // Coalesce whatever else is already queued into the same flush, unless it is time to
            // log in again (a busy connection must not put that off until its session ends).
            while shared.relogin_due().is_none_or(|due| due > tokio::time::Instant::now()) {
                let Ok(frame) = queue.try_recv() else { break };
                out.write_all(&frame).await.map_err(written)?;
            }
            out.flush().await.map_err(written)?;
        }
        out.shutdown().await.map_err(written)
    }
    .await;
    if let Err(reason) = result {
        shared.close(reason);
    }
}

/// Sleeps until `at`, or for ever.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_length_prefix_alone_reserves_little_and_the_buffer_grows_with_what_arrives() {
        const CHUNK: usize = 64 * 1024;
        const AHEAD: usize = 1 << 20;
        let reserve = |buf: &BytesMut| read_reserve(&FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES), buf, CHUNK, AHEAD);
        let claim: i32 = 100 * 1024 * 1024 - 4;
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&claim.to_be_bytes());
        assert_eq!(reserve(&buf), AHEAD, "a bare prefix claiming 100 MiB");
        buf.extend_from_slice(&vec![0; 3 << 20]);
        assert_eq!(reserve(&buf), buf.len(), "doubling as the frame arrives");
        // A frame under `ahead`: the whole rest at once, as before.
        let mut small = BytesMut::new();
        small.extend_from_slice(&500_000i32.to_be_bytes());
        assert_eq!(reserve(&small), 500_000);
        // Near the end of the frame: only what is missing (at least a chunk).
        small.extend_from_slice(&vec![0; 499_000]);
        assert_eq!(reserve(&small), CHUNK, "never below a chunk");
        assert_eq!(reserve(&BytesMut::new()), CHUNK, "nothing yet");
    }
}
