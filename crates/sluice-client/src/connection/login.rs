//! Logging a connection in with SASL after ApiVersions, and in again on its writer before the
//! session the broker gave ends (KIP-368). Without the `sasl` feature there is nothing to log in
//! with: no [`Relogin`] can exist, and the writer never stops for one.

#[cfg(feature = "sasl")]
pub(super) use with_sasl::{relogin, Relogin};
#[cfg(not(feature = "sasl"))]
pub(super) use without_sasl::{relogin, Relogin};

#[cfg(feature = "sasl")]
mod with_sasl {
    use super::super::*;

    /// A SASL session with an end: who logs in again, and when.
    #[derive(Debug, Clone)]
    pub(in crate::connection) struct Relogin {
        config: SaslConfig,
        /// The SaslAuthenticate version.
        version: i16,
        client_id: Option<String>,
        broker: String,
        timeout: Duration,
        due: tokio::time::Instant,
    }

    impl Relogin {
        /// When the writer logs in again.
        pub(in crate::connection) fn due_at(&self) -> tokio::time::Instant {
            self.due
        }

        /// When to log in again, for a session of `lifetime` that began at `started`: at a random
        /// point between 85 % and 95 % of it, so that connections opened together do not all log in
        /// again at once.
        pub(in crate::connection) fn due(started: tokio::time::Instant, lifetime: Duration) -> tokio::time::Instant {
            let mut random = [0u8; 2];
            // Without randomness from the OS, 85 %: still well before the session ends.
            if let Err(error) = getrandom::getrandom(&mut random) {
                tracing::debug!(%error, "no random point for the re-login: at 85 % of the session");
            }
            let fraction = 0.85 + 0.10 * f64::from(u16::from_le_bytes(random)) / f64::from(u16::MAX);
            started + lifetime.mul_f64(fraction)
        }
    }

    impl Connection {
        /// Logs in with SASL; a session with an end is handed to the writer to renew.
        pub(in crate::connection) async fn log_in(&self, config: SaslConfig) -> Result<()> {
            let version = self.version_for::<SaslAuthenticateRequest>(None)?;
            let started = tokio::time::Instant::now();
            let lifetime = authenticate(&mut Direct(self), &config, version).await?;
            if let Some(lifetime) = lifetime {
                let relogin = Relogin {
                    config,
                    version,
                    client_id: self.config.client_id.clone(),
                    broker: self.broker.clone(),
                    timeout: self.config.request_timeout,
                    due: Relogin::due(started, lifetime),
                };
                *self.shared.relogin.lock().unwrap_or_else(PoisonError::into_inner) = Some(relogin);
                // The writer may be waiting for requests with no renewal in view: a connection that
                // gets none must still log in again in time.
                self.shared.relogin_scheduled.notify_one();
            }
            Ok(())
        }
    }

    /// Logs in again on the writer, with nothing else sent meanwhile, and schedules the next time.
    pub(in crate::connection) async fn relogin<W: AsyncWrite + Unpin>(
        out: &mut BufWriter<W>,
        shared: &Arc<Shared>,
    ) -> std::result::Result<(), Closed> {
        let Some(relogin) = shared.relogin.lock().unwrap_or_else(PoisonError::into_inner).clone() else {
            return Ok(());
        };
        let started = tokio::time::Instant::now();
        let mut channel = WriterChannel { out, shared, relogin: &relogin };
        let lifetime = authenticate(&mut channel, &relogin.config, relogin.version)
            .await
            .map_err(|e| Closed::Lost(format!("logging in again before the SASL session ended failed: {e}")))?;
        shared.relogins.fetch_add(1, Ordering::Relaxed);
        let mut next = shared.relogin.lock().unwrap_or_else(PoisonError::into_inner);
        *next = lifetime.map(|lifetime| Relogin { due: Relogin::due(started, lifetime), ..relogin });
        Ok(())
    }

    /// Where a login's requests go: a new connection's own request path, or, for a re-login, its
    /// writer (no other request may come between those of a login).
    trait LoginChannel {
        /// The broker's address, for errors.
        fn broker(&self) -> &str;
        /// Sends `request` at `version` and waits for its answer.
        async fn send<R: Request + Sync>(&mut self, request: &R, version: i16) -> Result<R::Response>;
    }

    /// Logs in over `channel` with `config`, sending SaslAuthenticate at `version`: drives a
    /// [`Login`]. Returns the session lifetime the broker gave, if any.
    async fn authenticate<C: LoginChannel>(
        channel: &mut C,
        config: &SaslConfig,
        version: i16,
    ) -> Result<Option<Duration>> {
        let (mut login, handshake) = Login::start(config, channel.broker())?;
        let answer = channel.send(&handshake, 1).await?;
        let mut token = login.handshake(&answer)?;
        loop {
            let request = SaslAuthenticateRequest { auth_bytes: token.into(), ..SaslAuthenticateRequest::default() };
            let answer = channel.send(&request, version).await?;
            match login.authenticate(answer)? {
                Some(next) => token = next,
                None => return Ok(login.session_lifetime()),
            }
        }
    }

    /// A login's requests on a connection's own request path (a new connection: nothing else is
    /// sent on it yet).
    struct Direct<'a>(&'a Connection);

    impl LoginChannel for Direct<'_> {
        fn broker(&self) -> &str {
            &self.0.broker
        }

        async fn send<R: Request + Sync>(&mut self, request: &R, version: i16) -> Result<R::Response> {
            self.0.send_version(request, version).await
        }
    }

    /// A re-login's requests, written by the writer itself while it holds every other request back.
    struct WriterChannel<'a, W> {
        out: &'a mut BufWriter<W>,
        shared: &'a Arc<Shared>,
        relogin: &'a Relogin,
    }

    impl<W: AsyncWrite + Unpin> LoginChannel for WriterChannel<'_, W> {
        fn broker(&self) -> &str {
            &self.relogin.broker
        }

        async fn send<R: Request + Sync>(&mut self, request: &R, version: i16) -> Result<R::Response> {
            let broker = self.relogin.broker.clone();
            let api = api_name::<R>();
            let correlation_id = self.shared.next_correlation_id();
            let mut frame = BytesMut::new();
            encode_request(&mut frame, correlation_id, self.relogin.client_id.as_deref(), version, request)
                .map_err(|source| Error::Encode { broker: broker.clone(), api, version, source })?;
            let (reply, response) = oneshot::channel();
            self.shared.pending().insert(correlation_id, reply);
            let _guard = PendingGuard { shared: Arc::clone(self.shared), correlation_id };
            let lost = |e: std::io::Error| closed_error(broker.clone(), Closed::Lost(format!("write failed: {e}")));
            self.out.write_all(&frame).await.map_err(lost)?;
            self.out.flush().await.map_err(lost)?;
            let timeout = self.relogin.timeout;
            let deadline = tokio::time::Instant::now() + timeout;
            // A re-login that gets no answer fails, and that closes the connection.
            receive::<R>(broker, api, version, (timeout, deadline), response).await
        }
    }
}

#[cfg(not(feature = "sasl"))]
mod without_sasl {
    use super::super::*;

    /// A session to renew: none without SASL.
    #[derive(Debug, Clone)]
    pub(in crate::connection) enum Relogin {}

    impl Relogin {
        pub(in crate::connection) fn due_at(&self) -> tokio::time::Instant {
            match *self {}
        }
    }

    /// Never called: no session is ever due.
    pub(in crate::connection) async fn relogin<W: AsyncWrite + Unpin>(
        _: &mut BufWriter<W>,
        _: &Arc<Shared>,
    ) -> std::result::Result<(), Closed> {
        Ok(())
    }
}
