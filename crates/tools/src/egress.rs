//! Safe egress: the one way tools reach the network.
//!
//! An [`EgressPolicy`] belongs to one tenant. It joins the operator's
//! [`EgressConfig`] (caps, and the explicit exceptions for private
//! destinations, empty by default) with the tenant's [`TenantEgress`] (the
//! hosts its tools may reach). [`EgressPolicy::send`] performs one request:
//! check the URL, resolve the host through the policy's [`Resolver`], check
//! *every* resolved address, then connect to exactly those checked addresses
//! (the HTTP client's own resolver is replaced by one that knows only the
//! checked host and its checked addresses), follow redirects by hand with the
//! same checks on every hop, and read the body only up to the size cap, all
//! under one deadline.
//!
//! Invariants, as absences:
//! - No connection goes to an address that was not checked: there is no DNS
//!   lookup between check and connect (so no DNS-rebinding gap), no proxy
//!   (environment proxies are ignored), and no redirect followed by the HTTP
//!   library.
//! - No loopback, private, link-local, CGNAT or reserved address is reached
//!   unless the operator excepted that address and port; no metadata,
//!   unspecified, multicast or broadcast address is reached at all, whatever
//!   the exceptions. IPv4 embedded in IPv6 (mapped, compatible, NAT64, 6to4,
//!   Teredo) is judged as the IPv4 address.
//! - No host outside the tenant's allow list is resolved or contacted.
//! - No body is buffered past the cap; no schemes but `http` and `https`.
//! - No refusal message holds a URL's path or query (they may carry a
//!   credential): refusals name the host, the address and the reason.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bulkhead_core::{TenantCtx, TenantId};
use reqwest::header::{self, HeaderMap};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use url::{Host, Url};

use crate::ToolError;

// ---------------------------------------------------------------------------
// Configuration: the operator's part and the tenant's part.

/// The operator's egress settings (a section of the platform configuration).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EgressConfig {
    /// Private, loopback, link-local, CGNAT or reserved destinations that
    /// tools may reach anyway, each with its ports: `127.0.0.1:8080`,
    /// `10.1.0.0/16:443,8443`, `[::1]:9000`, `[fd00::/8]:*`. Empty by default.
    /// Metadata, unspecified, multicast and broadcast addresses cannot be
    /// excepted.
    pub exceptions: Vec<AddrException>,
    /// Largest response body read, in bytes; the rest is cut off.
    pub max_response_bytes: u64,
    /// Deadline for a whole exchange: every hop, redirects and body included.
    pub timeout_ms: u64,
    /// Redirects followed at most; each hop is checked again.
    pub max_redirects: u32,
}

impl Default for EgressConfig {
    fn default() -> Self {
        Self { exceptions: Vec::new(), max_response_bytes: 1024 * 1024, timeout_ms: 30_000, max_redirects: 5 }
    }
}

/// A tenant's egress settings (part of its settings document).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TenantEgress {
    /// Hosts the tenant's tools may reach: `api.example.com` (default port of
    /// the scheme only), `*.example.com` (subdomains, not the apex),
    /// `api.example.com:443,8443`, `api.example.com:*`, `203.0.113.7:8080`,
    /// or `*` (any public host, default ports). Empty: nothing.
    pub allow: Vec<HostRule>,
    /// A tighter body cap than the operator's; the operator's is the ceiling.
    pub max_response_bytes: Option<u64>,
    /// A tighter deadline than the operator's; the operator's is the ceiling.
    pub timeout_ms: Option<u64>,
}

/// Which ports a rule admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ports {
    /// The scheme's default port only (80 for http, 443 for https).
    Default,
    /// Any port.
    Any,
    /// These ports.
    List(Vec<u16>),
}

impl Ports {
    fn admits(&self, port: u16, default_port: u16) -> bool {
        match self {
            Ports::Default => port == default_port,
            Ports::Any => true,
            Ports::List(list) => list.contains(&port),
        }
    }

    fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(Ports::Any);
        }
        let list = text
            .split(',')
            .map(|p| p.trim().parse::<u16>().ok().filter(|p| *p != 0))
            .collect::<Option<Vec<u16>>>()
            .ok_or_else(|| format!("`{text}` is not a port list (e.g. `443`, `80,8080` or `*`)"))?;
        Ok(Ports::List(list))
    }

    fn render(&self) -> Option<String> {
        match self {
            Ports::Default => None,
            Ports::Any => Some("*".into()),
            Ports::List(l) => Some(l.iter().map(u16::to_string).collect::<Vec<_>>().join(",")),
        }
    }
}

/// What host a [`HostRule`] matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Any host.
    Any,
    /// Exactly this domain (lower case, no trailing dot).
    Exact(String),
    /// Any subdomain of this suffix (`*.example.com` holds `example.com`).
    Suffix(String),
    /// Exactly this IP literal.
    Ip(IpAddr),
}

/// One entry of a tenant's allow list; parsed from and shown as a string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostRule {
    pub host: HostPattern,
    pub ports: Ports,
}

impl FromStr for HostRule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bad = || format!("`{text}` is not a host rule (e.g. `api.example.com`, `*.example.com:443`)");
        // `[v6]` or `[v6]:ports`; otherwise `host` or `host:ports`.
        let (host, ports) = if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest.split_once(']').ok_or_else(bad)?;
            let ip: Ipv6Addr = inside.parse().map_err(|_| bad())?;
            let ports = match after {
                "" => Ports::Default,
                p => Ports::parse(p.strip_prefix(':').ok_or_else(bad)?)?,
            };
            return Ok(HostRule { host: HostPattern::Ip(IpAddr::V6(ip)), ports });
        } else if let Ok(ip) = text.parse::<Ipv6Addr>() {
            return Ok(HostRule { host: HostPattern::Ip(IpAddr::V6(ip)), ports: Ports::Default });
        } else {
            match text.split_once(':') {
                Some((h, p)) => (h, Ports::parse(p)?),
                None => (text, Ports::Default),
            }
        };
        let host = host.to_ascii_lowercase();
        let pattern = if host == "*" {
            HostPattern::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            HostPattern::Suffix(normal_domain(suffix).ok_or_else(bad)?)
        } else if let Ok(ip) = host.parse::<Ipv4Addr>() {
            HostPattern::Ip(IpAddr::V4(ip))
        } else {
            HostPattern::Exact(normal_domain(&host).ok_or_else(bad)?)
        };
        Ok(HostRule { host: pattern, ports })
    }
}

/// A domain as the `url` crate would hold it (IDNA, lower case), or `None`.
fn normal_domain(text: &str) -> Option<String> {
    if text.is_empty() || text.contains(['*', '/', '@', ' ', '[', ']']) {
        return None;
    }
    match Host::parse(text).ok()? {
        Host::Domain(d) => Some(d.trim_end_matches('.').to_owned()),
        // `010.1`-style shorthands parse as IPv4; a rule must say what it means.
        Host::Ipv4(_) | Host::Ipv6(_) => None,
    }
}

impl TryFrom<String> for HostRule {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<HostRule> for String {
    fn from(r: HostRule) -> String {
        r.to_string()
    }
}

impl fmt::Display for HostRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HostPattern::Any => f.write_str("*")?,
            HostPattern::Exact(d) => f.write_str(d)?,
            HostPattern::Suffix(d) => write!(f, "*.{d}")?,
            HostPattern::Ip(IpAddr::V4(ip)) => write!(f, "{ip}")?,
            HostPattern::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
        }
        match self.ports.render() {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        }
    }
}

impl HostRule {
    fn matches(&self, host: &Host<&str>, port: u16, default_port: u16) -> bool {
        self.matches_host(host) && self.ports.admits(port, default_port)
    }

    fn matches_host(&self, host: &Host<&str>) -> bool {
        match (&self.host, host) {
            (HostPattern::Any, _) => true,
            (HostPattern::Exact(d), Host::Domain(h)) => h.trim_end_matches('.') == d,
            (HostPattern::Suffix(s), Host::Domain(h)) => {
                let h = h.trim_end_matches('.');
                h.len() > s.len() + 1 && h.ends_with(s.as_str()) && h[..h.len() - s.len()].ends_with('.')
            }
            (HostPattern::Ip(ip), Host::Ipv4(h)) => ip.to_canonical() == IpAddr::V4(*h),
            (HostPattern::Ip(ip), Host::Ipv6(h)) => ip.to_canonical() == IpAddr::V6(*h).to_canonical(),
            _ => false,
        }
    }
}

/// An operator's exception: a network (one address or a CIDR block) and
/// its ports. Parsed from and shown as a string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AddrException {
    pub addr: IpAddr,
    pub prefix: u8,
    pub ports: Ports,
}

impl FromStr for AddrException {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bad = || {
            format!(
                "`{text}` is not an exception: use ADDRESS[/PREFIX]:PORTS, e.g. `127.0.0.1:8080`, \
                 `10.0.0.0/8:443`, `[::1]:9000`, `[fd00::/8]:*`"
            )
        };
        let (net, ports) = if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest.split_once(']').ok_or_else(bad)?;
            (inside, after.strip_prefix(':').ok_or_else(bad)?)
        } else {
            text.rsplit_once(':').filter(|(n, _)| !n.contains(':')).ok_or_else(bad)?
        };
        let (addr, prefix) = match net.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (net, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        // `::ffff:a.b.c.d/N` is IPv4: addresses are compared in canonical form.
        let (addr, prefix) = match addr.to_canonical() {
            IpAddr::V4(v4) if addr.is_ipv6() => (IpAddr::V4(v4), prefix.checked_sub(96).ok_or_else(bad)?),
            _ => (addr, prefix),
        };
        let ports = Ports::parse(ports)?;
        Ok(AddrException { addr: mask(addr, prefix), prefix, ports })
    }
}

impl TryFrom<String> for AddrException {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<AddrException> for String {
    fn from(e: AddrException) -> String {
        e.to_string()
    }
}

impl fmt::Display for AddrException {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = if self.addr.is_ipv4() { 32 } else { 128 };
        let net = if self.prefix == full {
            self.addr.to_string()
        } else {
            format!("{}/{}", self.addr, self.prefix)
        };
        let ports = self.ports.render().unwrap_or_else(|| "*".into());
        match self.addr {
            IpAddr::V4(_) => write!(f, "{net}:{ports}"),
            IpAddr::V6(_) => write!(f, "[{net}]:{ports}"),
        }
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

impl AddrException {
    fn covers(&self, addr: SocketAddr) -> bool {
        let ip = addr.ip().to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4()
            && mask(ip, self.prefix) == self.addr
            // An exception names its ports explicitly (`*` for all).
            && self.ports.admits(addr.port(), 0)
    }
}

// ---------------------------------------------------------------------------
// Address classes.

/// What kind of destination an IP address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrClass {
    /// Routable on the internet.
    Public,
    /// 127/8, ::1.
    Loopback,
    /// 10/8, 172.16/12, 192.168/16, fc00::/7, fec0::/10.
    Private,
    /// 169.254/16, fe80::/10.
    LinkLocal,
    /// Cloud instance metadata (169.254.169.254, fd00:ec2::254, …).
    Metadata,
    /// 100.64/10, carrier-grade NAT.
    SharedCgnat,
    /// 0.0.0.0/8, :: — on Linux, connecting to them reaches the host itself.
    Unspecified,
    /// 224/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// Reserved, documentation, benchmarking and other special ranges.
    Reserved,
}

impl AddrClass {
    /// Whether an operator's exception may open this class.
    pub fn exceptable(self) -> bool {
        matches!(
            self,
            AddrClass::Loopback
                | AddrClass::Private
                | AddrClass::LinkLocal
                | AddrClass::SharedCgnat
                | AddrClass::Reserved
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AddrClass::Public => "public",
            AddrClass::Loopback => "loopback",
            AddrClass::Private => "private",
            AddrClass::LinkLocal => "link-local",
            AddrClass::Metadata => "cloud metadata",
            AddrClass::SharedCgnat => "shared (CGNAT)",
            AddrClass::Unspecified => "unspecified",
            AddrClass::Multicast => "multicast",
            AddrClass::Broadcast => "broadcast",
            AddrClass::Reserved => "reserved",
        }
    }
}

impl AddrClass {
    fn with_article(self) -> String {
        let article = if self == AddrClass::Unspecified { "an" } else { "a" };
        format!("{article} {}", self.as_str())
    }
}

impl fmt::Display for AddrClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Classifies an address; IPv4 carried inside IPv6 is classified as IPv4.
pub fn classify(ip: IpAddr) -> AddrClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let m = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
    u32::from(ip) & m == u32::from(Ipv4Addr::from(net)) & m
}

fn classify_v4(ip: Ipv4Addr) -> AddrClass {
    const METADATA: [[u8; 4]; 4] = [
        [169, 254, 169, 254], // AWS, GCP, Azure, OpenStack, …
        [169, 254, 170, 2],   // AWS ECS task metadata
        [100, 100, 100, 200], // Alibaba Cloud
        [168, 63, 129, 16],   // Azure WireServer (a public address, reachable only from VMs)
    ];
    if METADATA.iter().any(|m| ip.octets() == *m) {
        return AddrClass::Metadata;
    }
    let c = |net, prefix| in_v4(ip, net, prefix);
    if c([0, 0, 0, 0], 8) {
        AddrClass::Unspecified
    } else if c([127, 0, 0, 0], 8) {
        AddrClass::Loopback
    } else if c([10, 0, 0, 0], 8) || c([172, 16, 0, 0], 12) || c([192, 168, 0, 0], 16) {
        AddrClass::Private
    } else if c([169, 254, 0, 0], 16) {
        AddrClass::LinkLocal
    } else if c([100, 64, 0, 0], 10) {
        AddrClass::SharedCgnat
    } else if ip == Ipv4Addr::BROADCAST {
        AddrClass::Broadcast
    } else if c([224, 0, 0, 0], 4) {
        AddrClass::Multicast
    } else if c([240, 0, 0, 0], 4)
        || c([192, 0, 0, 0], 24)
        || c([192, 0, 2, 0], 24)
        || c([198, 51, 100, 0], 24)
        || c([203, 0, 113, 0], 24)
        || c([198, 18, 0, 0], 15)
        || c([192, 88, 99, 0], 24)
    {
        AddrClass::Reserved
    } else {
        AddrClass::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddrClass {
    let bits = u128::from(ip);
    let s = ip.segments();
    let low_v4 = Ipv4Addr::from(bits as u32);
    let in_net = |net: u128, prefix: u32| bits >> (128 - prefix) == net >> (128 - prefix);
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        return AddrClass::Metadata;
    }
    if ip.is_unspecified() {
        return AddrClass::Unspecified;
    }
    if ip.is_loopback() {
        return AddrClass::Loopback;
    }
    // ::a.b.c.d (compatible), ::ffff:a.b.c.d (mapped), ::ffff:0:a.b.c.d
    // (translated), 64:ff9b::a.b.c.d (NAT64): the IPv4 address decides.
    if bits >> 32 == 0 || bits >> 32 == 0xffff || bits >> 32 == 0xffff_0000 || in_net(0x64_ff9b << 96, 96) {
        return classify_v4(low_v4);
    }
    // 6to4 embeds the IPv4 address in bits 16..48.
    if s[0] == 0x2002 {
        let embedded = Ipv4Addr::from(((u32::from(s[1])) << 16) | u32::from(s[2]));
        return match classify_v4(embedded) {
            AddrClass::Public => AddrClass::Public,
            inner => inner,
        };
    }
    // Teredo: server in bits 32..64, client inverted in the low 32 bits.
    if s[0] == 0x2001 && s[1] == 0 {
        let server = Ipv4Addr::from(((u32::from(s[2])) << 16) | u32::from(s[3]));
        let client = Ipv4Addr::from(!(bits as u32));
        for inner in [classify_v4(client), classify_v4(server)] {
            if inner != AddrClass::Public {
                return inner;
            }
        }
        return AddrClass::Public;
    }
    if s[0] & 0xfe00 == 0xfc00 || s[0] & 0xffc0 == 0xfec0 {
        AddrClass::Private
    } else if s[0] & 0xffc0 == 0xfe80 {
        AddrClass::LinkLocal
    } else if s[0] & 0xff00 == 0xff00 {
        AddrClass::Multicast
    } else if s[0] & 0xff00 == 0 // ::/8 beyond the forms above
        || in_net(0x0100 << 112, 64) // discard-only
        || in_net(0x2001_0db8 << 96, 32) // documentation
        || in_net(0x2001_0010 << 96, 28) // ORCHID
        || in_net(0x2001_0002 << 96, 48) // benchmarking
        || in_net(0x0064_ff9b_0001 << 80, 48) // local-use NAT64
        || in_net(0x3fff << 112, 20)
    // documentation (2024)
    {
        AddrClass::Reserved
    } else {
        AddrClass::Public
    }
}

// ---------------------------------------------------------------------------
// Refusals.

/// Why the egress policy refused a destination. Messages name the host, the
/// address and the reason — never a path or query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("only http and https URLs may be fetched, not `{0}:`")]
    Scheme(String),
    #[error("URLs with a user name or password are refused; use a credential from the vault instead")]
    UserInfo,
    #[error("the URL is not valid: {0}")]
    BadUrl(String),
    #[error("`{host}` is not on this tenant's egress allow list")]
    HostNotAllowed { host: String },
    #[error("port {port} of `{host}` is not on this tenant's egress allow list")]
    PortNotAllowed { host: String, port: u16 },
    #[error(
        "`{host}` → {addr} is {} address{}",
        class.with_article(),
        if class.exceptable() {
            "; only an operator's egress exception for this address and port can open it"
        } else {
            ", which is never reachable"
        }
    )]
    Address { host: String, addr: SocketAddr, class: AddrClass },
    #[error("more than {max} redirects")]
    TooManyRedirects { max: u32 },
    #[error("a redirect from `{host}` has no usable Location")]
    BadRedirect { host: String },
}

// ---------------------------------------------------------------------------
// Resolution.

/// Turns a host name into addresses. The policy resolves through this and
/// checks what it returns; tests substitute their own.
#[async_trait]
pub trait Resolver: Send + Sync + 'static {
    async fn resolve(&self, host: &str) -> std::io::Result<Vec<IpAddr>>;
}

/// The operating system's resolver (`getaddrinfo`, via tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

#[async_trait]
impl Resolver for SystemResolver {
    async fn resolve(&self, host: &str) -> std::io::Result<Vec<IpAddr>> {
        Ok(tokio::net::lookup_host((host, 0)).await?.map(|a| a.ip()).collect())
    }
}

/// A destination that passed every check: where to connect, exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: Url,
    /// The host as the URL spells it (a domain, or an IP literal).
    pub host: String,
    pub port: u16,
    /// The checked addresses; the connection goes to one of these only.
    pub addrs: Vec<SocketAddr>,
}

/// Stands in for the HTTP client's DNS: knows one checked host and its
/// checked addresses, and refuses every other name.
struct PinnedDns {
    host: String,
    addrs: Vec<SocketAddr>,
}

impl reqwest::dns::Resolve for PinnedDns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let wanted = self.host.trim_end_matches('.');
        let found =
            name.as_str().trim_end_matches('.').eq_ignore_ascii_case(wanted).then(|| self.addrs.clone());
        Box::pin(async move {
            match found {
                Some(addrs) => Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs),
                None => Err("egress: name not checked by the policy".into()),
            }
        })
    }
}

// ---------------------------------------------------------------------------
// The policy.

/// One tenant's egress policy. Cheap to clone.
#[derive(Clone)]
pub struct EgressPolicy {
    inner: Arc<Inner>,
}

struct Inner {
    tenant: TenantId,
    allow: Vec<HostRule>,
    exceptions: Vec<AddrException>,
    max_response_bytes: u64,
    timeout: Duration,
    max_redirects: u32,
    resolver: Arc<dyn Resolver>,
}

impl fmt::Debug for EgressPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgressPolicy")
            .field("tenant", &self.inner.tenant)
            .field("allow", &self.inner.allow)
            .field("exceptions", &self.inner.exceptions)
            .field("max_response_bytes", &self.inner.max_response_bytes)
            .field("timeout", &self.inner.timeout)
            .field("max_redirects", &self.inner.max_redirects)
            .finish()
    }
}

/// An outgoing request, before any check. Its `Debug` shows the method,
/// the host and the header names only: the query and the header values may
/// hold a credential.
#[derive(Clone)]
pub struct EgressRequest {
    pub method: Method,
    pub url: Url,
    /// Headers to send. Mark credentials with `HeaderValue::set_sensitive`:
    /// sensitive headers (and `Authorization`, `Cookie`) are dropped when a
    /// redirect leaves the origin.
    pub headers: HeaderMap,
    pub body: Option<Vec<u8>>,
}

impl fmt::Debug for EgressRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgressRequest")
            .field("method", &self.method)
            .field("host", &self.url.host_str())
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("body_bytes", &self.body.as_ref().map(Vec::len))
            .finish()
    }
}

impl EgressRequest {
    pub fn get(url: Url) -> Self {
        Self { method: Method::GET, url, headers: HeaderMap::new(), body: None }
    }
}

/// What came back, cut at the size cap — raw: nothing is redacted yet, so
/// it is for code that redacts before a model or a log sees it.
#[derive(Debug, Clone)]
pub struct EgressResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body, at most the policy's `max_response_bytes`.
    pub body: Vec<u8>,
    /// Whether the body was cut at the cap.
    pub truncated: bool,
    /// Redirects followed.
    pub redirects: u32,
    /// Request body bytes sent, over all hops.
    pub bytes_sent: u64,
    /// The host that answered last.
    pub final_host: String,
    pub duration: Duration,
}

impl EgressPolicy {
    /// The policy of `ctx`'s tenant: the operator's `config` with the
    /// tenant's `tenant` settings, resolving through the system resolver.
    pub fn new(ctx: &TenantCtx, config: &EgressConfig, tenant: &TenantEgress) -> Self {
        let cap = |t: Option<u64>, op: u64| t.map_or(op, |t| t.min(op));
        Self {
            inner: Arc::new(Inner {
                tenant: ctx.tenant_id(),
                allow: tenant.allow.clone(),
                exceptions: config.exceptions.clone(),
                max_response_bytes: cap(tenant.max_response_bytes, config.max_response_bytes),
                timeout: Duration::from_millis(cap(tenant.timeout_ms, config.timeout_ms)),
                max_redirects: config.max_redirects,
                resolver: Arc::new(SystemResolver),
            }),
        }
    }

    /// The same policy resolving names through `resolver`.
    pub fn with_resolver(self, resolver: Arc<dyn Resolver>) -> Self {
        let i = &self.inner;
        Self {
            inner: Arc::new(Inner {
                tenant: i.tenant,
                allow: i.allow.clone(),
                exceptions: i.exceptions.clone(),
                max_response_bytes: i.max_response_bytes,
                timeout: i.timeout,
                max_redirects: i.max_redirects,
                resolver,
            }),
        }
    }

    pub fn max_response_bytes(&self) -> u64 {
        self.inner.max_response_bytes
    }

    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Refuses a context of another tenant than the policy's.
    pub fn check_tenant(&self, ctx: &TenantCtx) -> Result<(), ToolError> {
        if ctx.tenant_id() == self.inner.tenant { Ok(()) } else { Err(ToolError::TenantMismatch) }
    }

    /// Checks an address against the classes and the operator's exceptions.
    pub fn check_addr(&self, host: &str, addr: SocketAddr) -> Result<(), Denied> {
        let class = classify(addr.ip());
        if class == AddrClass::Public
            || (class.exceptable() && self.inner.exceptions.iter().any(|e| e.covers(addr)))
        {
            Ok(())
        } else {
            Err(Denied::Address { host: host.to_owned(), addr, class })
        }
    }

    /// Checks a URL, resolves its host and checks every address; `Ok` names
    /// exactly where a connection may go. Nothing is sent.
    pub async fn check(&self, url: &Url) -> Result<Target, ToolError> {
        let scheme = url.scheme();
        if scheme != "http" && scheme != "https" {
            return Err(Denied::Scheme(scheme.to_owned()).into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Denied::UserInfo.into());
        }
        // For http(s) the `url` crate has already turned decimal, hex and
        // octal IPv4 spellings (`2130706433`, `0x7f000001`, `0177.0.0.1`)
        // into `Host::Ipv4`, so they are judged as the addresses they are.
        let host = url.host().ok_or_else(|| Denied::BadUrl("no host".into()))?;
        let host_str = url.host_str().unwrap_or_default().to_owned();
        let default_port = if scheme == "https" { 443 } else { 80 };
        let port = url.port_or_known_default().unwrap_or(default_port);
        // An IP literal is judged as an address first: the clearer reason.
        let literal = match host {
            Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
            Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
            Host::Domain(_) => None,
        };
        if let Some(ip) = literal {
            self.check_addr(&host_str, SocketAddr::new(ip, port))?;
        }
        if !self.inner.allow.iter().any(|r| r.matches(&host, port, default_port)) {
            let host_only = self.inner.allow.iter().any(|r| r.matches_host(&host));
            return Err(if host_only {
                Denied::PortNotAllowed { host: host_str, port }
            } else {
                Denied::HostNotAllowed { host: host_str }
            }
            .into());
        }
        let addrs = match literal {
            Some(ip) => vec![SocketAddr::new(ip, port)],
            None => {
                let name = host_str.trim_end_matches('.');
                let ips = self.inner.resolver.resolve(name).await.map_err(|_| ToolError::Upstream {
                    host: host_str.clone(),
                    reason: "the name could not be resolved".into(),
                })?;
                if ips.is_empty() {
                    return Err(ToolError::Upstream {
                        host: host_str,
                        reason: "the name resolves to no address".into(),
                    });
                }
                let mut addrs: Vec<SocketAddr> =
                    ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect();
                addrs.dedup();
                // Every address must pass, not just one: the connector may
                // pick any of them, and a mixed answer is itself suspicious.
                for addr in &addrs {
                    self.check_addr(&host_str, *addr)?;
                }
                addrs
            }
        };
        Ok(Target { url: url.clone(), host: host_str, port, addrs })
    }

    /// An HTTP client that can reach `target` and nothing else: its DNS
    /// knows only the target's checked addresses, it uses no proxy and
    /// follows no redirect.
    pub(crate) fn pinned_client(&self, target: &Target) -> Result<reqwest::Client, ToolError> {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .referer(false)
            .dns_resolver(PinnedDns { host: target.host.clone(), addrs: target.addrs.clone() })
            .connect_timeout(self.inner.timeout)
            .user_agent(concat!("bulkhead-tools/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|_| ToolError::Upstream {
                host: target.host.clone(),
                reason: "the HTTP client could not be built".into(),
            })
    }

    /// Sends `request` under the policy: every hop checked, redirects
    /// followed by hand, the body read up to the cap, all within the deadline.
    pub async fn send(&self, ctx: &TenantCtx, request: EgressRequest) -> Result<EgressResponse, ToolError> {
        self.check_tenant(ctx)?;
        let started = Instant::now();
        let timeout = self.inner.timeout;
        match tokio::time::timeout(timeout, self.send_hops(request, started)).await {
            Ok(result) => result,
            Err(_) => Err(ToolError::Timeout(timeout)),
        }
    }

    async fn send_hops(&self, mut req: EgressRequest, started: Instant) -> Result<EgressResponse, ToolError> {
        let mut redirects = 0u32;
        let mut bytes_sent = 0u64;
        loop {
            let target = self.check(&req.url).await?;
            let client = self.pinned_client(&target)?;
            let mut builder =
                client.request(req.method.clone(), req.url.clone()).headers(req.headers.clone());
            if let Some(body) = &req.body {
                bytes_sent += body.len() as u64;
                builder = builder.body(body.clone());
            }
            let mut resp = builder.send().await.map_err(|e| upstream(&target.host, &e))?;
            let status = resp.status();
            let location = resp.headers().get(header::LOCATION).cloned();
            if is_followed_redirect(status)
                && let Some(location) = location
            {
                if redirects >= self.inner.max_redirects {
                    return Err(Denied::TooManyRedirects { max: self.inner.max_redirects }.into());
                }
                let next = location
                    .to_str()
                    .ok()
                    .and_then(|l| req.url.join(l).ok())
                    .ok_or_else(|| Denied::BadRedirect { host: target.host.clone() })?;
                redirects += 1;
                // 303 always, and 301/302 after a POST, become a GET without a body.
                if (status == StatusCode::SEE_OTHER && req.method != Method::HEAD)
                    || (matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND)
                        && req.method == Method::POST)
                {
                    req.method = Method::GET;
                    req.body = None;
                    req.headers.remove(header::CONTENT_TYPE);
                    req.headers.remove(header::CONTENT_LENGTH);
                }
                if next.origin() != req.url.origin() {
                    strip_credentials(&mut req.headers);
                }
                req.url = next;
                continue;
            }
            let headers = resp.headers().clone();
            let cap = self.inner.max_response_bytes as usize;
            let mut body = Vec::new();
            let mut truncated = false;
            // Chunk by chunk, so a huge body is never held: stop at the cap
            // and drop the response, which closes the connection.
            while let Some(chunk) = resp.chunk().await.map_err(|e| upstream(&target.host, &e))? {
                let room = cap - body.len();
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    truncated = true;
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            return Ok(EgressResponse {
                status,
                headers,
                body,
                truncated,
                redirects,
                bytes_sent,
                final_host: target.host,
                duration: started.elapsed(),
            });
        }
    }
}

fn is_followed_redirect(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::MOVED_PERMANENTLY
            | StatusCode::FOUND
            | StatusCode::SEE_OTHER
            | StatusCode::TEMPORARY_REDIRECT
            | StatusCode::PERMANENT_REDIRECT
    )
}

/// Drops what must not follow a redirect to another origin.
fn strip_credentials(headers: &mut HeaderMap) {
    let sensitive: Vec<_> = headers
        .iter()
        .filter(|(name, value)| {
            value.is_sensitive()
                || **name == header::AUTHORIZATION
                || **name == header::PROXY_AUTHORIZATION
                || **name == header::COOKIE
        })
        .map(|(name, _)| name.clone())
        .collect();
    for name in sensitive {
        headers.remove(name);
    }
}

/// A transport failure, described without the library's text (which names
/// the full URL, query and all).
fn upstream(host: &str, e: &reqwest::Error) -> ToolError {
    let reason = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "the response body broke off"
    } else if e.is_request() {
        "the request could not be sent"
    } else {
        "the exchange failed"
    };
    ToolError::Upstream { host: host.to_owned(), reason: reason.into() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_core::OperatorCtx;

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse().unwrap())
    }

    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse().unwrap())
    }

    #[test]
    fn addresses_are_classified() {
        let cases = [
            ("127.0.0.1", AddrClass::Loopback),
            ("127.255.1.2", AddrClass::Loopback),
            ("10.0.0.1", AddrClass::Private),
            ("172.16.0.1", AddrClass::Private),
            ("172.31.255.255", AddrClass::Private),
            ("172.32.0.1", AddrClass::Public),
            ("192.168.1.1", AddrClass::Private),
            ("169.254.1.1", AddrClass::LinkLocal),
            ("169.254.169.254", AddrClass::Metadata),
            ("100.64.0.1", AddrClass::SharedCgnat),
            ("100.127.255.255", AddrClass::SharedCgnat),
            ("100.128.0.1", AddrClass::Public),
            ("0.0.0.0", AddrClass::Unspecified),
            ("0.1.2.3", AddrClass::Unspecified),
            ("224.0.0.1", AddrClass::Multicast),
            ("255.255.255.255", AddrClass::Broadcast),
            ("240.0.0.1", AddrClass::Reserved),
            ("198.18.0.1", AddrClass::Reserved),
            ("8.8.8.8", AddrClass::Public),
            ("93.184.216.34", AddrClass::Public),
        ];
        for (a, class) in cases {
            assert_eq!(classify(v4(a)), class, "{a}");
        }
        let cases = [
            ("::1", AddrClass::Loopback),
            ("::", AddrClass::Unspecified),
            ("fc00::1", AddrClass::Private),
            ("fd12:3456::1", AddrClass::Private),
            ("fe80::1", AddrClass::LinkLocal),
            ("fd00:ec2::254", AddrClass::Metadata),
            ("ff02::1", AddrClass::Multicast),
            ("::ffff:127.0.0.1", AddrClass::Loopback),
            ("::ffff:10.1.2.3", AddrClass::Private),
            ("::ffff:169.254.169.254", AddrClass::Metadata),
            ("::127.0.0.1", AddrClass::Loopback),
            ("::ffff:0:10.0.0.1", AddrClass::Private),
            ("64:ff9b::7f00:1", AddrClass::Loopback),
            ("64:ff9b::808:808", AddrClass::Public),
            ("2002:7f00:1::", AddrClass::Loopback),
            ("2002:c0a8:101::1", AddrClass::Private),
            ("2002:808:808::1", AddrClass::Public),
            // Teredo: client 127.0.0.1 inverted in the low 32 bits.
            ("2001:0:4136:e378:8000:63bf:80ff:fffe", AddrClass::Loopback),
            ("2001:db8::1", AddrClass::Reserved),
            ("2606:4700::1111", AddrClass::Public),
            ("::ffff:8.8.8.8", AddrClass::Public),
        ];
        for (a, class) in cases {
            assert_eq!(classify(v6(a)), class, "{a}");
        }
    }

    #[test]
    fn host_rules_parse_match_and_print() {
        let r: HostRule = "API.Example.com".parse().unwrap();
        assert_eq!(r.to_string(), "api.example.com");
        let https = |h: &'static str| Host::Domain(h);
        assert!(r.matches(&https("api.example.com"), 443, 443));
        assert!(r.matches(&https("api.example.com."), 443, 443));
        assert!(!r.matches(&https("api.example.com"), 8443, 443), "default port only");
        assert!(!r.matches(&https("evil-api.example.com"), 443, 443));

        let r: HostRule = "*.example.com:443,8443".parse().unwrap();
        assert_eq!(r.to_string(), "*.example.com:443,8443");
        assert!(r.matches(&https("a.b.example.com"), 8443, 443));
        assert!(!r.matches(&https("example.com"), 443, 443), "the apex is not a subdomain");
        assert!(!r.matches(&https("badexample.com"), 443, 443));
        assert!(!r.matches(&https("a.example.com"), 80, 80));

        let r: HostRule = "127.0.0.1:*".parse().unwrap();
        assert!(r.matches(&Host::Ipv4(Ipv4Addr::LOCALHOST), 1234, 80));
        let r: HostRule = "[::1]:9000".parse().unwrap();
        assert_eq!(r.to_string(), "[::1]:9000");
        assert!(r.matches(&Host::Ipv6(Ipv6Addr::LOCALHOST), 9000, 80));
        let r: HostRule = "*".parse().unwrap();
        assert!(r.matches(&https("anything.test"), 443, 443));

        for bad in ["", "*.", "a b", "host:0", "host:x", "[::1", "http://x", "*.*.com", "[::1]9000"] {
            assert!(bad.parse::<HostRule>().is_err(), "{bad}");
        }
        let t: TenantEgress =
            serde_json::from_value(serde_json::json!({"allow": ["a.test", "*.b.test:*"]})).unwrap();
        assert_eq!(serde_json::to_value(&t.allow).unwrap(), serde_json::json!(["a.test", "*.b.test:*"]));
        assert!(serde_json::from_value::<TenantEgress>(serde_json::json!({"allow": ["a b"]})).is_err());
    }

    #[test]
    fn exceptions_parse_and_cover() {
        let e: AddrException = "127.0.0.1:8080".parse().unwrap();
        assert!(e.covers("127.0.0.1:8080".parse().unwrap()));
        assert!(!e.covers("127.0.0.1:8081".parse().unwrap()));
        assert!(!e.covers("127.0.0.2:8080".parse().unwrap()));
        // A mapped address is the same destination.
        assert!(e.covers("[::ffff:127.0.0.1]:8080".parse().unwrap()));
        assert_eq!(e.to_string(), "127.0.0.1:8080");

        let e: AddrException = "10.1.2.3/16:443,8443".parse().unwrap();
        assert_eq!(e.to_string(), "10.1.0.0/16:443,8443");
        assert!(e.covers("10.1.200.7:8443".parse().unwrap()));
        assert!(!e.covers("10.2.0.1:443".parse().unwrap()));

        let e: AddrException = "[fd00::/8]:*".parse().unwrap();
        assert!(e.covers("[fd12::1]:1".parse().unwrap()));
        assert!(!e.covers("10.0.0.1:1".parse().unwrap()));
        let e: AddrException = "[::1]:9000".parse().unwrap();
        assert!(e.covers("[::1]:9000".parse().unwrap()));
        let e: AddrException = "[::ffff:127.0.0.1]:80".parse().unwrap();
        assert_eq!(e.to_string(), "127.0.0.1:80");
        assert!(e.covers("127.0.0.1:80".parse().unwrap()));

        for bad in ["127.0.0.1", "10.0.0.0/33:1", "::1:80", "[::1]", "host:80", "1.2.3.4:*,1"] {
            assert!(bad.parse::<AddrException>().is_err(), "{bad}");
        }
    }

    fn policy(allow: &[&str], exceptions: &[&str]) -> EgressPolicy {
        let ctx = OperatorCtx::local_cli().act_for(TenantId::new());
        let config = EgressConfig {
            exceptions: exceptions.iter().map(|e| e.parse().unwrap()).collect(),
            ..Default::default()
        };
        let tenant =
            TenantEgress { allow: allow.iter().map(|r| r.parse().unwrap()).collect(), ..Default::default() };
        EgressPolicy::new(&ctx, &config, &tenant)
    }

    #[tokio::test]
    async fn literal_addresses_are_refused_before_any_lookup() {
        let p = policy(&["*:*"], &[]);
        for url in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://0.0.0.0:8080/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/",
            "http://10.0.0.1/",
            "http://100.64.0.1/",
        ] {
            let err = p.check(&Url::parse(url).unwrap()).await.unwrap_err();
            assert!(matches!(err, ToolError::Egress(Denied::Address { .. })), "{url}: {err}");
        }
        let err = p.check(&Url::parse("http://2130706433/secret?key=s3cr3t").unwrap()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "egress denied: `127.0.0.1` → 127.0.0.1:80 is a loopback address; only an operator's \
             egress exception for this address and port can open it"
        );
    }

    #[tokio::test]
    async fn metadata_cannot_be_excepted() {
        let p = policy(&["*:*"], &["169.254.0.0/16:*", "0.0.0.0/8:*"]);
        for url in ["http://169.254.169.254/", "http://0.0.0.0/"] {
            let err = p.check(&Url::parse(url).unwrap()).await.unwrap_err();
            assert!(err.to_string().contains("never reachable"), "{err}");
        }
        assert!(p.check(&Url::parse("http://169.254.1.1/").unwrap()).await.is_ok());
    }

    #[tokio::test]
    async fn schemes_userinfo_and_the_allow_list() {
        let p = policy(&["api.example.com", "*.svc.example.com:8443"], &[]);
        for (url, want) in [
            ("ftp://api.example.com/", "only http and https"),
            ("file:///etc/passwd", "only http and https"),
            ("https://user:pw@api.example.com/", "user name or password"),
            ("https://other.example.com/", "`other.example.com` is not on this tenant's egress allow list"),
            ("https://api.example.com:8443/", "port 8443 of `api.example.com`"),
            ("https://svc.example.com:8443/", "not on this tenant's egress allow list"),
        ] {
            let err = p.check(&Url::parse(url).unwrap()).await.unwrap_err();
            assert!(err.is_egress_denied() && err.to_string().contains(want), "{url}: {err}");
        }
    }

    #[test]
    fn caps_take_the_tighter_of_operator_and_tenant() {
        let ctx = OperatorCtx::local_cli().act_for(TenantId::new());
        let config = EgressConfig { max_response_bytes: 1000, timeout_ms: 5000, ..Default::default() };
        let tenant =
            TenantEgress { max_response_bytes: Some(10_000), timeout_ms: Some(100), ..Default::default() };
        let p = EgressPolicy::new(&ctx, &config, &tenant);
        assert_eq!(p.max_response_bytes(), 1000);
        assert_eq!(p.timeout(), Duration::from_millis(100));
        let other = OperatorCtx::local_cli().act_for(TenantId::new());
        assert!(matches!(p.check_tenant(&other), Err(ToolError::TenantMismatch)));
        assert!(p.check_tenant(&ctx).is_ok());
    }

    #[test]
    fn request_debug_output_hides_query_and_header_values() {
        let mut req = EgressRequest::get(Url::parse("https://api.test/x?key=s3cr3t").unwrap());
        req.headers.insert("x-api-key", header::HeaderValue::from_static("s3cr3t"));
        let shown = format!("{req:?}");
        assert!(
            !shown.contains("s3cr3t") && shown.contains("api.test") && shown.contains("x-api-key"),
            "{shown}"
        );
    }

    #[test]
    fn credentials_do_not_cross_origins() {
        let mut h = HeaderMap::new();
        let mut secret = header::HeaderValue::from_static("k");
        secret.set_sensitive(true);
        h.insert("x-api-key", secret);
        h.insert(header::AUTHORIZATION, header::HeaderValue::from_static("Bearer t"));
        h.insert(header::ACCEPT, header::HeaderValue::from_static("*/*"));
        strip_credentials(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::ACCEPT));
    }
}
