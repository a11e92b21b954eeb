//! CrowdSec Local API client (1.4.6): machine login (JWT), alerts, the bouncer's
//! decision stream, with failover across several URLs. Every reply is untrusted input:
//! bodies are read up to a per-call limit, parsed into strict types, and every failure
//! is a typed [`LapiError`] (unreachable, credentials, clock, protocol), never a panic.

use std::io::Read as _;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Body limits per reply.
pub const MAX_LOGIN_REPLY: usize = 64 << 10;
pub const MAX_ALERTS_REPLY: usize = 1 << 20;
/// A startup stream carries every active decision (the community blocklist is some
/// tens of thousands, a few MiB).
pub const MAX_STREAM_REPLY: usize = 32 << 20;

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LapiError {
    /// No connection, TLS failure, timeout.
    Unreachable(String),
    /// 401/403: wrong machine password or bouncer key (or the machine is not validated).
    Credentials(String),
    /// The JWT the LAPI handed out is already expired by this host's clock.
    ClockSkew(String),
    /// Any other status, an oversized or malformed body.
    Protocol(String),
}

impl LapiError {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "unreachable",
            Self::Credentials(_) => "credentials",
            Self::ClockSkew(_) => "clock_skew",
            Self::Protocol(_) => "protocol",
        }
    }
}

impl std::fmt::Display for LapiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(m) => write!(f, "LAPI unreachable: {m}"),
            Self::Credentials(m) => write!(f, "LAPI refused the credentials: {m}"),
            Self::ClockSkew(m) => write!(f, "clock skew: {m}"),
            Self::Protocol(m) => write!(f, "LAPI protocol error: {m}"),
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct LoginReply {
    code: i64,
    expire: String,
    token: String,
}

/// One decision as the stream carries it. Unknown fields are allowed (later LAPIs add
/// some), the ones used are typed; `value` and `scope` are checked by the caller.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub id: i64,
    #[serde(default)]
    pub origin: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub scope: String,
    pub value: String,
    #[serde(default)]
    pub duration: String,
    #[serde(default)]
    pub scenario: String,
}

#[derive(Deserialize, Debug, Default, PartialEq, Eq)]
pub struct StreamReply {
    #[serde(default, rename = "new")]
    pub new: Option<Vec<Decision>>,
    #[serde(default)]
    pub deleted: Option<Vec<Decision>>,
}

/// serde accepts a JSON array for a struct (its fields in order); a LAPI reply is an
/// object, and anything else is refused.
fn require_object(body: &[u8], what: &str) -> Result<(), LapiError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(()),
        _ => Err(LapiError::Protocol(format!("{what} is not a JSON object"))),
    }
}

/// Parse a decision-stream body (also the fuzz target's entry point).
pub fn parse_stream(body: &[u8]) -> Result<StreamReply, LapiError> {
    require_object(body, "decision stream")?;
    serde_json::from_slice(body)
        .map_err(|e| LapiError::Protocol(format!("decision stream is not the expected JSON: {e}")))
}

/// Parse a login body; `now_s` is this host's clock. Returns the token and its expiry.
pub fn parse_login(body: &[u8], now_s: i64) -> Result<(String, i64), LapiError> {
    require_object(body, "login reply")?;
    let r: LoginReply = serde_json::from_slice(body)
        .map_err(|e| LapiError::Protocol(format!("login reply is not the expected JSON: {e}")))?;
    if r.code != 200 {
        return Err(LapiError::Protocol(format!("login reply code {}", r.code)));
    }
    if r.token.is_empty() || r.token.len() > 8192 || !r.token.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(LapiError::Protocol("login reply: unusable token".into()));
    }
    let exp = crate::rfc3339::parse(&r.expire)
        .map_err(|e| LapiError::Protocol(format!("login reply: expire {:?}: {e}", r.expire)))?;
    if exp <= now_s {
        return Err(LapiError::ClockSkew(format!(
            "the LAPI's token expires at {} which is {}s in the past by this host's clock; check NTP on both",
            r.expire,
            now_s - exp
        )));
    }
    Ok((r.token, exp))
}

/// Alerts asked for in one [`Lapi::alert_of`] (the newest first: the decision just
/// pulled belongs to one of an address's latest alerts).
pub const ALERT_LOOKUP_LIMIT: usize = 10;

/// What `GET /v1/alerts` says of one alert, as far as the bridge uses it.
#[derive(Deserialize)]
struct AlertRef {
    id: i64,
    #[serde(default)]
    machine_id: String,
    #[serde(default)]
    decisions: Option<Vec<DecisionRef>>,
}

#[derive(Deserialize)]
struct DecisionRef {
    id: i64,
}

/// Parse a `GET /v1/alerts` body (`null` or a list) and find the alert that holds
/// decision `decision_id`: its id and its machine (the detecting host). `Ok(None)` when
/// no listed alert holds it. The values are LAPI claims: the caller checks them.
pub fn parse_alert_of(body: &[u8], decision_id: i64) -> Result<Option<(i64, String)>, LapiError> {
    let list: Option<Vec<AlertRef>> = serde_json::from_slice(body)
        .map_err(|e| LapiError::Protocol(format!("alerts list is not the expected JSON: {e}")))?;
    Ok(list.unwrap_or_default().into_iter().find_map(|a| {
        a.decisions
            .unwrap_or_default()
            .iter()
            .any(|d| d.id == decision_id)
            .then_some((a.id, a.machine_id))
    }))
}

/// Parse the reply to `POST /v1/alerts`: the ids of the created alerts.
pub fn parse_alerts_reply(body: &[u8]) -> Result<Vec<String>, LapiError> {
    serde_json::from_slice::<Vec<String>>(body)
        .map_err(|e| LapiError::Protocol(format!("alerts reply is not a list of ids: {e}")))
}

/// The one form of an address in the bridge, in its index and in what it sends: an
/// IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is the IPv4 address a.b.c.d, which is how
/// the enforcer blocks and lists it. Any other address is itself.
pub fn normal(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

/// A local block to report.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub source: IpAddr,
    /// Set when the enforcer blocked the network `source`/len.
    pub prefix: Option<u8>,
    pub protocol: String,
    pub port: u16,
    pub scan: String,
    pub mode: String,
    pub distinct_ports: u32,
    pub handshake: bool,
    pub time_us: u64,
}

/// The scenario name of alerts.
pub const SCENARIO: &str = "sentry/portscan";

/// The body of `POST /v1/alerts` for `reports`.
pub fn alerts_body(reports: &[Report], decision: Option<Duration>) -> serde_json::Value {
    let alerts: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            let at = sentry_proto::logfmt::format_utc(r.time_us / 1000);
            let ip = normal(r.source).to_string();
            let (scope, value) = match r.prefix {
                Some(len) => ("Range", format!("{ip}/{len}")),
                None => ("Ip", ip.clone()),
            };
            let message = format!(
                "sentry: {value} {} scan ({}, {} distinct ports{}), last port {}/{}",
                r.scan,
                r.mode,
                r.distinct_ports,
                if r.handshake {
                    ", completed handshake"
                } else {
                    ""
                },
                r.port,
                r.protocol
            );
            let meta = serde_json::json!([
                {"key": "source_ip", "value": ip},
                {"key": "service", "value": "sentry"},
                {"key": "protocol", "value": r.protocol},
                {"key": "port", "value": r.port.to_string()},
                {"key": "distinct_ports", "value": r.distinct_ports.to_string()},
                {"key": "scan", "value": r.scan},
                {"key": "mode", "value": r.mode},
                {"key": "handshake", "value": r.handshake.to_string()},
            ]);
            let mut a = serde_json::json!({
                "scenario": SCENARIO,
                "scenario_hash": "",
                "scenario_version": env!("CARGO_PKG_VERSION"),
                "message": message,
                "events_count": r.distinct_ports,
                "start_at": at,
                "stop_at": at,
                "capacity": 0,
                "leakspeed": "0s",
                "simulated": false,
                "remediation": true,
                "events": [{"timestamp": at, "meta": meta}],
                "source": {"scope": scope, "value": value, "ip": ip},
                "labels": null,
            });
            if let Some(d) = decision {
                a["decisions"] = serde_json::json!([{
                    "duration": sentry_proto::format_go_duration(d),
                    "origin": "crowdsec",
                    "scenario": SCENARIO,
                    "scope": scope,
                    "type": "ban",
                    "value": value,
                }]);
            }
            a
        })
        .collect();
    serde_json::Value::Array(alerts)
}

/// The LAPIs, in order of preference, and the machine's session on the current one.
#[derive(Debug)]
pub struct Lapi {
    urls: Vec<String>,
    current: usize,
    agent: ureq::Agent,
    machine: Option<(String, String)>,
    bouncer_key: Option<String>,
    /// (index of the URL it is valid on, token, expiry in s).
    token: Option<(usize, String, i64)>,
    /// Set when the current URL changed since the caller last looked.
    pub failed_over: bool,
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Read at most `max` bytes of a reply; more is an error, not a truncation.
fn read_body(resp: ureq::Response, max: usize) -> Result<Vec<u8>, LapiError> {
    let mut v = Vec::new();
    resp.into_reader()
        .take(max as u64 + 1)
        .read_to_end(&mut v)
        .map_err(|e| LapiError::Unreachable(format!("reading the reply: {e}")))?;
    if v.len() > max {
        return Err(LapiError::Protocol(format!(
            "reply larger than {max} bytes"
        )));
    }
    Ok(v)
}

/// A short, printable excerpt of an error body for messages.
fn excerpt(resp: ureq::Response) -> String {
    let b = read_body(resp, 4096).unwrap_or_default();
    let s: String = String::from_utf8_lossy(&b)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    s
}

enum Call<'a> {
    Get(&'a str),
    Post(&'a str, &'a serde_json::Value),
    Delete(&'a str),
}

impl Lapi {
    pub fn new(
        urls: Vec<String>,
        machine: Option<(String, String)>,
        bouncer_key: Option<String>,
        timeout: Duration,
    ) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(3).min(timeout))
            .timeout(timeout)
            .redirects(0)
            .user_agent(concat!("sentry-share/", env!("CARGO_PKG_VERSION")))
            .build();
        Self {
            urls: urls
                .into_iter()
                .map(|u| u.trim_end_matches('/').to_string())
                .collect(),
            current: 0,
            agent,
            machine,
            bouncer_key,
            token: None,
            failed_over: false,
        }
    }

    pub fn current_url(&self) -> &str {
        self.urls.get(self.current).map_or("", String::as_str)
    }

    fn fail_over(&mut self) {
        if self.urls.len() > 1 {
            self.current = (self.current + 1) % self.urls.len();
            self.failed_over = true;
        }
    }

    /// One HTTP exchange on URL `i`: `Ok((status, response))` for any HTTP status,
    /// `Err(Unreachable)` when no reply came.
    fn raw(
        &self,
        i: usize,
        call: &Call<'_>,
        auth: Option<(&str, &str)>,
    ) -> Result<(u16, ureq::Response), LapiError> {
        let base = self.urls.get(i).map_or("", String::as_str);
        let (method, path) = match call {
            Call::Get(p) => ("GET", *p),
            Call::Post(p, _) => ("POST", *p),
            Call::Delete(p) => ("DELETE", *p),
        };
        let mut req = self.agent.request(method, &format!("{base}{path}"));
        if let Some((k, v)) = auth {
            req = req.set(k, v);
        }
        let r = match call {
            Call::Post(_, body) => req
                .set("Content-Type", "application/json")
                .send_bytes(body.to_string().as_bytes()),
            _ => req.call(),
        };
        match r {
            Ok(resp) => Ok((resp.status(), resp)),
            Err(ureq::Error::Status(code, resp)) => Ok((code, resp)),
            Err(ureq::Error::Transport(t)) => Err(LapiError::Unreachable(t.to_string())),
        }
    }

    /// Try every URL once from the current one: the first that answers wins (5xx and
    /// no answer move on to the next).
    fn with_failover<T>(
        &mut self,
        mut f: impl FnMut(&mut Self, usize) -> Result<T, LapiError>,
    ) -> Result<T, LapiError> {
        let mut last = None;
        for _ in 0..self.urls.len().max(1) {
            let i = self.current;
            match f(self, i) {
                Ok(v) => return Ok(v),
                Err(e @ LapiError::Unreachable(_)) => {
                    last = Some(e);
                    self.fail_over();
                }
                Err(LapiError::Protocol(m)) if m.starts_with("HTTP 5") => {
                    last = Some(LapiError::Protocol(m));
                    self.fail_over();
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| LapiError::Unreachable("no LAPI URL".into())))
    }

    fn login(&mut self, i: usize) -> Result<String, LapiError> {
        let Some((id, pw)) = self.machine.clone() else {
            return Err(LapiError::Credentials(
                "no machine credentials configured".into(),
            ));
        };
        let body = serde_json::json!({"machine_id": id, "password": pw, "scenarios": [SCENARIO]});
        let (code, resp) = self.raw(i, &Call::Post("/v1/watchers/login", &body), None)?;
        match code {
            200 => {
                let b = read_body(resp, MAX_LOGIN_REPLY)?;
                let (tok, exp) = parse_login(&b, now_s())?;
                self.token = Some((i, tok.clone(), exp));
                Ok(tok)
            }
            401 | 403 => Err(LapiError::Credentials(format!(
                "login of machine {id} on {}: HTTP {code}: {}",
                self.urls.get(i).map_or("", String::as_str),
                excerpt(resp)
            ))),
            c => Err(LapiError::Protocol(format!(
                "HTTP {c} to login: {}",
                excerpt(resp)
            ))),
        }
    }

    fn token_for(&mut self, i: usize) -> Result<String, LapiError> {
        match &self.token {
            // Refreshed a minute before it expires.
            Some((ti, tok, exp)) if *ti == i && *exp > now_s() + 60 => Ok(tok.clone()),
            _ => self.login(i),
        }
    }

    /// The URLs, in order of preference.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// `--check-config`: log in as the machine on URL `i` (what `cscli lapi status`
    /// does); the token's expiry (s since the epoch) on success.
    pub fn check_login(&mut self, i: usize) -> Result<i64, LapiError> {
        self.token = None;
        self.login(i)?;
        Ok(self.token.as_ref().map_or(0, |t| t.2))
    }

    /// `--check-config`: try the bouncer key on URL `i` with `GET /v1/decisions` (a
    /// lookup that, unlike `/v1/decisions/stream`, does not move this key's stream
    /// cursor, so the running bridge misses nothing). Ok with the number of decisions
    /// the LAPI holds for 127.0.0.1 (normally 0).
    pub fn check_bouncer(&mut self, i: usize) -> Result<usize, LapiError> {
        let Some(key) = self.bouncer_key.clone() else {
            return Err(LapiError::Credentials("no bouncer key configured".into()));
        };
        let path = "/v1/decisions?ip=127.0.0.1";
        let (code, resp) = self.raw(i, &Call::Get(path), Some(("X-Api-Key", &key)))?;
        match code {
            200 => {
                let b = read_body(resp, MAX_ALERTS_REPLY)?;
                // `null` when there is none, else a list of decisions.
                serde_json::from_slice::<Option<Vec<Decision>>>(&b)
                    .map(|v| v.map_or(0, |v| v.len()))
                    .map_err(|e| {
                        LapiError::Protocol(format!("GET {path}: not a list of decisions: {e}"))
                    })
            }
            401 | 403 => Err(LapiError::Credentials(format!(
                "bouncer key refused: HTTP {code}: {}",
                excerpt(resp)
            ))),
            c => Err(LapiError::Protocol(format!(
                "HTTP {c} to GET {path}: {}",
                excerpt(resp)
            ))),
        }
    }

    /// `POST /v1/alerts` as the machine; a 401 logs in again once (expired JWT).
    pub fn push_alerts(&mut self, body: &serde_json::Value) -> Result<Vec<String>, LapiError> {
        self.with_failover(|me, i| {
            for attempt in 0..2 {
                let tok = me.token_for(i)?;
                let bearer = format!("Bearer {tok}");
                let (code, resp) = me.raw(
                    i,
                    &Call::Post("/v1/alerts", body),
                    Some(("Authorization", &bearer)),
                )?;
                match code {
                    200 | 201 => return parse_alerts_reply(&read_body(resp, MAX_ALERTS_REPLY)?),
                    401 if attempt == 0 => {
                        me.token = None;
                        continue;
                    }
                    401 | 403 => {
                        return Err(LapiError::Credentials(format!(
                            "POST /v1/alerts: HTTP {code}: {}",
                            excerpt(resp)
                        )))
                    }
                    c => {
                        return Err(LapiError::Protocol(format!(
                            "HTTP {c} to POST /v1/alerts: {}",
                            excerpt(resp)
                        )))
                    }
                }
            }
            Err(LapiError::Credentials("token refused twice".into()))
        })
    }

    /// `GET /v1/decisions/stream` as the bouncer.
    pub fn stream(&mut self, startup: bool) -> Result<StreamReply, LapiError> {
        let Some(key) = self.bouncer_key.clone() else {
            return Err(LapiError::Credentials("no bouncer key configured".into()));
        };
        let path = if startup {
            "/v1/decisions/stream?startup=true"
        } else {
            "/v1/decisions/stream"
        };
        self.with_failover(|me, i| {
            let (code, resp) = me.raw(i, &Call::Get(path), Some(("X-Api-Key", &key)))?;
            match code {
                200 => parse_stream(&read_body(resp, MAX_STREAM_REPLY)?),
                401 | 403 => Err(LapiError::Credentials(format!(
                    "bouncer key refused: HTTP {code}: {}",
                    excerpt(resp)
                ))),
                c => Err(LapiError::Protocol(format!(
                    "HTTP {c} to GET {path}: {}",
                    excerpt(resp)
                ))),
            }
        })
    }

    /// The alert of decision `decision_id` for `addr`: `GET /v1/alerts?ip=ADDR` as the
    /// machine (the decision stream of 1.4.6 names neither the alert nor its machine),
    /// the newest [`ALERT_LOOKUP_LIMIT`] with an active decision, on the current URL only
    /// (a lookup is worth no fail-over). `Ok(None)`: no such alert, or no machine
    /// credentials to ask with.
    pub fn alert_of(
        &mut self,
        addr: IpAddr,
        decision_id: i64,
    ) -> Result<Option<(i64, String)>, LapiError> {
        if self.machine.is_none() {
            return Ok(None);
        }
        let path = format!(
            "/v1/alerts?ip={}&has_active_decision=true&limit={ALERT_LOOKUP_LIMIT}",
            normal(addr)
        );
        let i = self.current;
        for attempt in 0..2 {
            let tok = self.token_for(i)?;
            let bearer = format!("Bearer {tok}");
            let (code, resp) = self.raw(i, &Call::Get(&path), Some(("Authorization", &bearer)))?;
            match code {
                200 => return parse_alert_of(&read_body(resp, MAX_ALERTS_REPLY)?, decision_id),
                401 if attempt == 0 => self.token = None,
                401 | 403 => {
                    return Err(LapiError::Credentials(format!(
                        "GET /v1/alerts: HTTP {code}"
                    )))
                }
                c => return Err(LapiError::Protocol(format!("HTTP {c} to GET {path}"))),
            }
        }
        Err(LapiError::Credentials("token refused twice".into()))
    }

    /// `DELETE /v1/decisions?ip=ADDR` as the machine (1.4.6 wants a machine JWT here).
    pub fn delete_decisions(&mut self, addr: IpAddr) -> Result<(), LapiError> {
        let path = format!("/v1/decisions?ip={}", normal(addr));
        self.with_failover(|me, i| {
            let tok = me.token_for(i)?;
            let bearer = format!("Bearer {tok}");
            let (code, resp) = me.raw(i, &Call::Delete(&path), Some(("Authorization", &bearer)))?;
            match code {
                200 => {
                    let _ = read_body(resp, MAX_ALERTS_REPLY)?;
                    Ok(())
                }
                401 | 403 => Err(LapiError::Credentials(format!(
                    "DELETE decisions: HTTP {code}"
                ))),
                c => Err(LapiError::Protocol(format!("HTTP {c} to DELETE {path}"))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_normal_form() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(normal("::ffff:192.0.2.7".parse().unwrap()), v4);
        assert_eq!(normal(v4), v4);
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(normal(v6), v6);
        // IPv4-compatible (deprecated) is not mapped: left alone.
        let compat: IpAddr = "::192.0.2.7".parse().unwrap();
        assert_eq!(normal(compat), compat);
    }

    #[test]
    fn login_replies() {
        let ok = br#"{"code":200,"expire":"2030-01-01T00:00:00Z","token":"abc.def.ghi"}"#;
        assert_eq!(
            parse_login(ok, 1_800_000_000).unwrap(),
            ("abc.def.ghi".to_string(), 1_893_456_000)
        );
        let e = parse_login(ok, 1_900_000_000).unwrap_err();
        assert!(matches!(e, LapiError::ClockSkew(_)), "{e}");
        assert!(e.to_string().contains("in the past"), "{e}");
        for bad in [
            &b""[..],
            b"null",
            b"[]",
            br#"{"code":200,"expire":"soon","token":"t"}"#,
            br#"{"code":200,"expire":"2030-01-01T00:00:00Z","token":""}"#,
            br#"{"code":200,"expire":"2030-01-01T00:00:00Z","token":"a b"}"#,
            br#"{"code":500,"expire":"2030-01-01T00:00:00Z","token":"t"}"#,
            br#"{"code":200,"expire":"2030-01-01T00:00:00Z","token":"t","x":1}"#,
            br#"{"code":"200","expire":"2030-01-01T00:00:00Z","token":"t"}"#,
            br#"[200,"2030-01-01T00:00:00Z","t"]"#,
        ] {
            assert!(
                matches!(parse_login(bad, 0), Err(LapiError::Protocol(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// What 1.4.6 answers to `GET /v1/alerts?ip=...` (trimmed from the real LAPI).
    #[test]
    fn the_alert_of_a_decision_is_found_by_its_id() {
        let body = br#"[{"capacity":0,"created_at":"2026-12-07T11:29:11Z","decisions":[{"duration":"3h55m8s","id":4,"origin":"crowdsec","scenario":"sentry/portscan","scope":"Ip","simulated":false,"type":"ban","value":"192.0.2.77"}],"events_count":25,"id":3,"machine_id":"hostA","scenario":"sentry/portscan"},
            {"id":1,"machine_id":"hostB","decisions":[{"id":1}]},{"id":9,"decisions":null}]"#;
        assert_eq!(
            parse_alert_of(body, 4).unwrap(),
            Some((3, "hostA".to_string()))
        );
        assert_eq!(
            parse_alert_of(body, 1).unwrap(),
            Some((1, "hostB".to_string()))
        );
        assert_eq!(parse_alert_of(body, 2).unwrap(), None);
        assert_eq!(parse_alert_of(b"null", 2).unwrap(), None);
        for bad in [&b"{}"[..], b"[{\"id\":\"x\"}]", b"[1]", b""] {
            assert!(
                matches!(parse_alert_of(bad, 1), Err(LapiError::Protocol(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn stream_replies() {
        let b = br#"{"new":[{"duration":"3h59m59.5s","id":1,"origin":"crowdsec","scenario":"sentry/portscan","scope":"Ip","type":"ban","value":"10.0.0.5","until":"x"}],"deleted":null}"#;
        let r = parse_stream(b).unwrap();
        let n = r.new.unwrap();
        assert_eq!(n[0].value, "10.0.0.5");
        assert_eq!(n[0].scope, "Ip");
        assert!(r.deleted.is_none());
        assert_eq!(parse_stream(b"{}").unwrap(), StreamReply::default());
        for bad in [
            &b"[]"[..],
            b"{\"new\":{}}",
            b"{\"new\":[{\"id\":\"x\"}]}",
            b"{\"new\":[{\"id\":1}]}",
            b"{",
        ] {
            assert!(
                parse_stream(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse_alerts_reply(br#"["1","2"]"#).unwrap(), ["1", "2"]);
        assert!(parse_alerts_reply(br#"{"message":"x"}"#).is_err());
    }

    #[test]
    fn alerts_have_the_fields_the_lapi_requires() {
        let r = Report {
            source: "10.0.0.5".parse().unwrap(),
            prefix: None,
            protocol: "tcp".into(),
            port: 22,
            scan: "syn".into(),
            mode: "stcp".into(),
            distinct_ports: 12,
            handshake: false,
            time_us: 1_700_000_000_000_000,
        };
        let v = alerts_body(std::slice::from_ref(&r), None);
        let a = &v[0];
        for k in [
            "scenario",
            "scenario_hash",
            "scenario_version",
            "message",
            "events_count",
            "start_at",
            "stop_at",
            "capacity",
            "leakspeed",
            "simulated",
            "events",
            "source",
        ] {
            assert!(!a[k].is_null(), "{k}");
        }
        assert_eq!(a["remediation"], true);
        assert!(a.get("decisions").is_none());
        assert_eq!(a["source"]["scope"], "Ip");
        assert_eq!(a["start_at"], "2023-11-14T22:13:20.000Z");
        let v = alerts_body(&[r], Some(Duration::from_secs(5400)));
        assert_eq!(v[0]["decisions"][0]["duration"], "1h30m");
        assert_eq!(v[0]["decisions"][0]["scope"], "Ip");
    }

    /// Failover: the first URL is a closed port, the second answers (a one-shot HTTP
    /// server on loopback).
    #[test]
    fn fails_over_to_the_next_url() {
        use std::io::{Read, Write};
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_url = format!("http://{}", dead.local_addr().unwrap());
        drop(dead);
        let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let live_url = format!("http://{}", live.local_addr().unwrap());
        let t = std::thread::spawn(move || {
            let (mut s, _) = live.accept().unwrap();
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let body = r#"{"new":[],"deleted":[]}"#;
            write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            req
        });
        let mut l = Lapi::new(
            vec![dead_url, live_url.clone()],
            None,
            Some("k3y".into()),
            Duration::from_secs(5),
        );
        let r = l.stream(true).unwrap();
        assert_eq!(r.new, Some(vec![]));
        assert!(l.failed_over);
        assert_eq!(l.current_url(), live_url);
        let req = t.join().unwrap();
        assert!(
            req.starts_with("GET /v1/decisions/stream?startup=true "),
            "{req}"
        );
        assert!(req.to_ascii_lowercase().contains("x-api-key: k3y"), "{req}");
        // Nothing answers at all: a clear "unreachable".
        let e = Lapi::new(
            vec!["http://127.0.0.1:1".into()],
            None,
            Some("k".into()),
            Duration::from_secs(2),
        )
        .stream(false)
        .unwrap_err();
        assert_eq!(e.kind(), "unreachable", "{e}");
    }

    /// A scripted HTTP server on loopback: answers each connection with the next
    /// `(status, body)` and returns the request lines it saw.
    fn script(replies: Vec<(u16, &'static str)>) -> (String, std::thread::JoinHandle<Vec<String>>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let t = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for (code, body) in replies {
                let (s, _) = l.accept().unwrap();
                let mut r = BufReader::new(s);
                let mut first = String::new();
                r.read_line(&mut first).unwrap();
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).unwrap();
                    if h == "\r\n" || h.is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut b = vec![0u8; len];
                r.read_exact(&mut b).unwrap();
                seen.push(first.trim().to_string());
                let mut s = r.into_inner();
                write!(
                    s,
                    "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
            }
            seen
        });
        (url, t)
    }

    #[test]
    fn an_expired_token_logs_in_again_and_bad_credentials_are_named() {
        let login = r#"{"code":200,"expire":"2099-01-01T00:00:00Z","token":"t1"}"#;
        let (url, t) = script(vec![
            (200, login),
            (401, r#"{"message":"token expired"}"#),
            (200, login),
            (201, r#"["7"]"#),
        ]);
        let mut l = Lapi::new(
            vec![url],
            Some(("m".into(), "p".into())),
            None,
            Duration::from_secs(5),
        );
        assert_eq!(l.push_alerts(&serde_json::json!([])).unwrap(), ["7"]);
        let seen = t.join().unwrap();
        assert_eq!(
            seen,
            [
                "POST /v1/watchers/login HTTP/1.1",
                "POST /v1/alerts HTTP/1.1",
                "POST /v1/watchers/login HTTP/1.1",
                "POST /v1/alerts HTTP/1.1"
            ]
        );
        // Wrong password: a credentials error naming the machine, no retry loop.
        let (url, t) = script(vec![(
            401,
            r#"{"code":401,"message":"incorrect Username or Password"}"#,
        )]);
        let mut l = Lapi::new(
            vec![url],
            Some(("host-a".into(), "bad".into())),
            None,
            Duration::from_secs(5),
        );
        let e = l.push_alerts(&serde_json::json!([])).unwrap_err();
        assert_eq!(e.kind(), "credentials", "{e}");
        assert!(e.to_string().contains("host-a"), "{e}");
        t.join().unwrap();
        // A token already expired by our clock: clock skew, not a protocol error.
        let (url, t) = script(vec![(
            200,
            r#"{"code":200,"expire":"2001-01-01T00:00:00Z","token":"t"}"#,
        )]);
        let mut l = Lapi::new(
            vec![url],
            Some(("m".into(), "p".into())),
            None,
            Duration::from_secs(5),
        );
        assert_eq!(
            l.push_alerts(&serde_json::json!([])).unwrap_err().kind(),
            "clock_skew"
        );
        t.join().unwrap();
        // A bouncer key refused: 403.
        let (url, t) = script(vec![(403, r#"{"message":"access forbidden"}"#)]);
        let mut l = Lapi::new(vec![url], None, Some("k".into()), Duration::from_secs(5));
        assert_eq!(l.stream(true).unwrap_err().kind(), "credentials");
        t.join().unwrap();
    }

    #[test]
    fn check_config_calls_name_what_failed() {
        let login = r#"{"code":200,"expire":"2099-01-01T00:00:00Z","token":"t1"}"#;
        let (url, t) = script(vec![
            (200, login),
            (
                401,
                r#"{"code":401,"message":"incorrect Username or Password"}"#,
            ),
            (200, "null"),
            (200, "[]"),
            (403, r#"{"message":"access forbidden"}"#),
            (200, r#"{"not":"a list"}"#),
        ]);
        let mut l = Lapi::new(
            vec![url],
            Some(("host-a".into(), "pw".into())),
            Some("k".into()),
            Duration::from_secs(5),
        );
        assert_eq!(l.check_login(0).unwrap(), 4_070_908_800);
        let e = l.check_login(0).unwrap_err();
        assert_eq!(e.kind(), "credentials", "{e}");
        assert!(
            e.to_string().contains("incorrect Username or Password"),
            "{e}"
        );
        assert_eq!(l.check_bouncer(0).unwrap(), 0);
        assert_eq!(l.check_bouncer(0).unwrap(), 0);
        assert_eq!(l.check_bouncer(0).unwrap_err().kind(), "credentials");
        assert_eq!(l.check_bouncer(0).unwrap_err().kind(), "protocol");
        let seen = t.join().unwrap();
        assert_eq!(seen[0], "POST /v1/watchers/login HTTP/1.1");
        assert_eq!(seen[2], "GET /v1/decisions?ip=127.0.0.1 HTTP/1.1");
    }

    /// An oversized reply is refused, not truncated or buffered without bound.
    #[test]
    fn oversized_replies_are_refused() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).unwrap();
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                MAX_LOGIN_REPLY + 10
            );
            let _ = s.write_all(&vec![b' '; MAX_LOGIN_REPLY + 10]);
        });
        let mut lapi = Lapi::new(
            vec![url],
            Some(("m".into(), "p".into())),
            None,
            Duration::from_secs(5),
        );
        let e = lapi.push_alerts(&serde_json::json!([])).unwrap_err();
        assert_eq!(e.kind(), "protocol", "{e}");
        assert!(e.to_string().contains("larger than"), "{e}");
        t.join().unwrap();
    }
}
