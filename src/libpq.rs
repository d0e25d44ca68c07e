//! Connection settings as libpq reads them (PostgreSQL 15, "Connection Strings",
//! "Environment Variables", "The Connection Service File", "The Password File"): a
//! `database_url` in either form, then the service, then the `PG*` environment variables, then
//! libpq's defaults (Debian's libpq: Unix sockets in `/var/run/postgresql`), then the password
//! file; resolved here into a [`ConnParams`]: a `tokio_postgres::Config` in which nothing is
//! left to the library's own defaults, and the TLS settings (`ssl.rs`), which tokio-postgres
//! cannot express.
//!
//! Why our own: tokio-postgres 0.7 reads no environment variable, no service and no password
//! file, defaults a missing host to `localhost` instead of the socket directory, and refuses a
//! malformed setting only as "invalid configuration". The maintained crate closest to this
//! (`pg-client-config` 0.1) covers a subset (no `PGPASSWORD`, `PGHOSTADDR`, `PGSSLMODE`,
//! `PGTARGETSESSIONATTRS`, nor the socket default) and hands parsing to tokio-postgres, so it
//! cannot say which part of a setting is wrong. Nothing here ever shows a password.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_postgres::config::TargetSessionAttrs;

mod ssl;
pub use ssl::{RootCert, SslMode, TlsParams};

/// Debian's libpq (`DEFAULT_PGSOCKET_DIR`), then the upstream default: the directories whose
/// `.s.PGSQL.<port>` socket is used when no host is given.
pub const SOCKET_DIRS: [&str; 2] = ["/var/run/postgresql", "/tmp"];
/// Debian's `PGSYSCONFDIR` (where libpq looks for `pg_service.conf`).
const SYSCONFDIR: &str = "/etc/postgresql-common";
/// Our default `connect_timeout` (libpq's is none: wait for ever).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The environment variables libpq reads, in its order, with the parameter each one fills.
const ENV_PARAMS: [(&str, &str); 11] = [
    ("PGHOST", "host"),
    ("PGHOSTADDR", "hostaddr"),
    ("PGPORT", "port"),
    ("PGDATABASE", "dbname"),
    ("PGUSER", "user"),
    ("PGPASSWORD", "password"),
    ("PGPASSFILE", "passfile"),
    ("PGOPTIONS", "options"),
    ("PGAPPNAME", "application_name"),
    ("PGSSLMODE", "sslmode"),
    ("PGSSLROOTCERT", "sslrootcert"),
];
const ENV_PARAMS_MORE: [(&str, &str); 5] = [
    ("PGSSLCERT", "sslcert"),
    ("PGSSLKEY", "sslkey"),
    ("PGCONNECT_TIMEOUT", "connect_timeout"),
    ("PGTARGETSESSIONATTRS", "target_session_attrs"),
    ("PGCHANNELBINDING", "channel_binding"),
];

/// Parameters we honour. libpq knows more (below); those are refused by name.
const SUPPORTED: [&str; 19] = [
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "options",
    "application_name",
    "fallback_application_name",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "connect_timeout",
    "target_session_attrs",
    "channel_binding",
    "service",
    "sslnegotiation",
];
/// libpq 15's other parameters: valid there, not honoured here.
const UNSUPPORTED: [&str; 19] = [
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "client_encoding",
    "replication",
    "gssencmode",
    "requiressl",
    "sslcompression",
    "sslpassword",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "requirepeer",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "krbsrvname",
    "gsslib",
];

/// A setting that cannot be used as given. Never carries a password.
#[derive(Debug, thiserror::Error)]
pub enum ConnInfoError {
    #[error("unknown parameter {name:?} in {origin} (libpq 15 has no such parameter)")]
    UnknownParameter { name: String, origin: String },
    #[error("parameter {name:?} in {origin} is not supported by vamsa-migrate{}", why.map(|w| format!(": {w}")).unwrap_or_default())]
    Unsupported {
        name: String,
        origin: String,
        why: Option<&'static str>,
    },
    #[error("the {part} in {origin} contains an unescaped {found:?}: write it as {escaped} (percent-encode each of @ : / ? # % in the user name and password)")]
    Unescaped {
        /// `user name` or `password`.
        part: &'static str,
        origin: String,
        found: char,
        escaped: String,
    },
    #[error("{origin}: {problem}")]
    Malformed { origin: String, problem: String },
    #[error("{name} in {origin}: {problem}")]
    BadValue {
        name: String,
        origin: String,
        problem: String,
    },
    #[error("service {name:?} is not defined in {}", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(" or "))]
    NoService { name: String, files: Vec<PathBuf> },
    #[error("{}: cannot read: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::sync::Arc<std::io::Error>,
    },
}

/// A resolved connection: what tokio-postgres is given for start-up and authentication, and
/// the TLS settings, which `db::connect` applies itself (tokio-postgres 0.7 knows only
/// disable/prefer/require and verifies nothing).
#[derive(Debug, Clone)]
pub struct ConnParams {
    /// Hosts, ports, user, database, password, timeouts; its own `ssl_mode` is unused.
    pub driver: tokio_postgres::Config,
    pub tls: TlsParams,
}

/// Parameter name -> (value, where it came from).
type Params = BTreeMap<String, (String, String)>;

/// What the resolver reads from outside: the environment, the OS user, the file system.
pub struct Inputs<'a> {
    pub env: &'a HashMap<String, String>,
    /// The effective OS user's name (libpq's default user).
    pub os_user: String,
    /// From `database_password_file` or systemd's credential: wins over every other source.
    pub password_override: Option<String>,
}

impl Inputs<'_> {
    fn home(&self) -> Option<PathBuf> {
        self.env.get("HOME").map(PathBuf::from)
    }
}

/// The effective user's name from the user database (getpwuid_r(3) through `nix`), else `$USER`.
pub fn os_user(env: &HashMap<String, String>) -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .or_else(|| env.get("USER").cloned())
        .unwrap_or_else(|| "postgres".into())
}

/// Resolves `conninfo` (a `postgresql://` URI or `key=value` pairs) as libpq 15 does.
///
/// Errors: [`ConnInfoError`], naming the parameter and where it came from (`database_url`, a
/// variable, a service file), or the character of the user name or password to percent-encode.
pub fn resolve(conninfo: &str, inputs: &Inputs<'_>) -> Result<ConnParams, ConnInfoError> {
    let mut params = parse(conninfo, "database_url")?;
    add_service(&mut params, inputs)?;
    for (var, name) in ENV_PARAMS.iter().chain(ENV_PARAMS_MORE.iter()) {
        if let Some(value) = inputs.env.get(*var).filter(|v| !v.is_empty()) {
            params
                .entry((*name).into())
                .or_insert_with(|| (value.clone(), (*var).into()));
        }
    }
    if let Some(password) = &inputs.password_override {
        params.insert(
            "password".into(),
            (password.clone(), "database_password_file".into()),
        );
    }
    add_defaults(&mut params, inputs);
    if !params.contains_key("password") {
        if let Some(found) = password_from_file(&params, inputs)? {
            params.insert("password".into(), found);
        }
    }
    Ok(ConnParams {
        driver: build(&params)?,
        tls: ssl::tls_params(&params, inputs.home().as_deref())?,
    })
}

/// The defaults of libpq for what is still missing (`connectOptions2`).
fn add_defaults(params: &mut Params, inputs: &Inputs<'_>) {
    let default = |v: &str| (v.to_string(), "libpq's default".to_string());
    params
        .entry("port".into())
        .or_insert_with(|| default("5432"));
    if !params.contains_key("host") && !params.contains_key("hostaddr") {
        let port = params["port"]
            .0
            .split(',')
            .next()
            .unwrap_or("5432")
            .to_string();
        let dir = SOCKET_DIRS
            .iter()
            .find(|d| Path::new(d).join(format!(".s.PGSQL.{port}")).exists())
            .unwrap_or(&SOCKET_DIRS[0]);
        params.insert("host".into(), default(dir));
    }
    let user = params
        .get("user")
        .cloned()
        .unwrap_or_else(|| (inputs.os_user.clone(), "the OS user".into()));
    params.entry("user".into()).or_insert(user.clone());
    params.entry("dbname".into()).or_insert(user);
}

/// Parses one connection string, URI or `key=value`, without any default.
fn parse(conninfo: &str, origin: &str) -> Result<Params, ConnInfoError> {
    let pairs = match ["postgresql://", "postgres://"]
        .iter()
        .find_map(|p| conninfo.strip_prefix(p))
    {
        Some(rest) => parse_uri(rest, origin)?,
        None => parse_pairs(conninfo, origin)?,
    };
    let mut params = Params::new();
    for (name, value) in pairs {
        check_name(&name, origin)?;
        params.insert(name, (value, origin.to_string()));
    }
    Ok(params)
}

fn check_name(name: &str, origin: &str) -> Result<(), ConnInfoError> {
    if SUPPORTED.contains(&name) {
        Ok(())
    } else if UNSUPPORTED.contains(&name) {
        Err(ConnInfoError::Unsupported {
            name: name.into(),
            origin: origin.into(),
            why: None,
        })
    } else {
        Err(ConnInfoError::UnknownParameter {
            name: name.into(),
            origin: origin.into(),
        })
    }
}

/// `key = value` pairs separated by white space; values may be single-quoted, `\` escapes.
fn parse_pairs(text: &str, origin: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let malformed = |problem: String| ConnInfoError::Malformed {
        origin: origin.into(),
        problem,
    };
    let mut chars = text.chars().peekable();
    let mut pairs = Vec::new();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let name: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(malformed(format!("missing \"=\" after {name:?}")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let quoted = chars.next_if_eq(&'\'').is_some();
        let mut value = String::new();
        loop {
            match chars.next() {
                None if quoted => {
                    return Err(malformed(format!(
                        "the value of {name:?} has no closing quote"
                    )))
                }
                None => break,
                Some('\'') if quoted => break,
                Some(c) if c.is_whitespace() && !quoted => break,
                Some('\\') => value.extend(chars.next()),
                Some(c) => value.push(c),
            }
        }
        pairs.push((name, value));
    }
}

/// `[user[:password]@][host[:port][,...]][/dbname][?name=value[&...]]` after the scheme.
fn parse_uri(rest: &str, origin: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let (main, query) = match rest.find('?') {
        // A '?' before the last '@' is inside the credentials; check_userinfo names it.
        Some(q) if !rest[..userinfo_end(rest).unwrap_or(0)].contains('?') => {
            (&rest[..q], Some(&rest[q + 1..]))
        }
        _ => (rest, None),
    };
    let mut pairs = Vec::new();
    let hosts_and_db = match userinfo_end(main) {
        Some(at) => {
            pairs.extend(parse_userinfo(&main[..at], origin)?);
            &main[at + 1..]
        }
        None => main,
    };
    let (hosts, dbname) = hosts_and_db.split_once('/').unwrap_or((hosts_and_db, ""));
    pairs.extend(parse_hosts(hosts, origin)?);
    if !dbname.is_empty() {
        pairs.push(("dbname".into(), decode(dbname, "dbname", origin)?));
    }
    for item in query.into_iter().flat_map(|q| q.split('&')) {
        let (name, value) = item
            .split_once('=')
            .ok_or_else(|| ConnInfoError::Malformed {
                origin: origin.into(),
                problem: format!(
                    "URI parameter {:?} has no \"=\"",
                    decode(item, "a parameter", origin).unwrap_or_default()
                ),
            })?;
        let name = decode(name, "a parameter name", origin)?;
        let value = decode(value, &name, origin)?;
        match (name.as_str(), value.as_str()) {
            // libpq's JDBC-compatible spelling.
            ("ssl", "true") => pairs.push(("sslmode".into(), "require".into())),
            _ => pairs.push((name, value)),
        }
    }
    Ok(pairs)
}

/// Where the credentials end: the last '@' before any `name=value` parameter (so that an
/// unescaped '@', '/', '?' or '#' in a password is found and named, not taken for a host).
fn userinfo_end(text: &str) -> Option<usize> {
    let end = text.find('=').unwrap_or(text.len());
    text[..end].rfind('@')
}

fn parse_userinfo(info: &str, origin: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let (user, password) = match info.split_once(':') {
        Some((u, p)) => (u, Some(p)),
        None => (info, None),
    };
    let mut pairs = Vec::new();
    for (part, name, text) in [
        ("user name", "user", Some(user)),
        ("password", "password", password),
    ] {
        let Some(text) = text else { continue };
        if let Some(found) = text
            .chars()
            .find(|c| "@/?#".contains(*c) || (name == "user" && *c == ':'))
        {
            return Err(ConnInfoError::Unescaped {
                part,
                origin: origin.into(),
                found,
                escaped: format!("%{:02X}", found as u32),
            });
        }
        if !text.is_empty() || name == "password" {
            let value = decode(text, name, origin).map_err(|_| ConnInfoError::Unescaped {
                part,
                origin: origin.into(),
                found: '%',
                escaped: "%25".into(),
            })?;
            pairs.push((name.to_string(), value));
        }
    }
    Ok(pairs)
}

/// `host[:port]` items separated by ','; IPv6 addresses in brackets; a host may be
/// percent-encoded (a socket directory: `%2Fvar%2Frun%2Fpostgresql`).
fn parse_hosts(text: &str, origin: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let (mut hosts, mut ports) = (Vec::new(), Vec::new());
    for item in text.split(',') {
        let (host, port) = match item.strip_prefix('[') {
            Some(v6) => {
                let (h, after) = v6.split_once(']').ok_or_else(|| ConnInfoError::Malformed {
                    origin: origin.into(),
                    problem: format!("IPv6 host {item:?} has no closing \"]\""),
                })?;
                (h.to_string(), after.strip_prefix(':').unwrap_or(""))
            }
            None => match item.rsplit_once(':') {
                Some((h, p)) => (decode(h, "host", origin)?, p),
                None => (decode(item, "host", origin)?, ""),
            },
        };
        hosts.push(host);
        ports.push(port.to_string());
    }
    let mut pairs = Vec::new();
    if hosts.iter().any(|h| !h.is_empty()) {
        pairs.push(("host".into(), hosts.join(",")));
    }
    if ports.iter().any(|p| !p.is_empty()) {
        pairs.push(("port".into(), ports.join(",")));
    }
    Ok(pairs)
}

/// Percent-decoding (RFC 3986); the result must be UTF-8.
fn decode(text: &str, name: &str, origin: &str) -> Result<String, ConnInfoError> {
    let bad = |problem: &str| ConnInfoError::BadValue {
        name: name.into(),
        origin: origin.into(),
        problem: problem.into(),
    };
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&b, after)) = rest.split_first() {
        if b == b'%' {
            let hex = after.get(..2).and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    bad("'%' must be followed by two hexadecimal digits (write '%' itself as %25)")
                })?;
            bytes.push(byte);
            rest = &after[2..];
        } else {
            bytes.push(b);
            rest = after;
        }
    }
    String::from_utf8(bytes).map_err(|_| bad("percent-encoded bytes are not UTF-8"))
}

/// `service` (or `PGSERVICE`): its section of `PGSERVICEFILE` (else `~/.pg_service.conf`), else
/// of `PGSYSCONFDIR/pg_service.conf`, fills the parameters not given.
fn add_service(params: &mut Params, inputs: &Inputs<'_>) -> Result<(), ConnInfoError> {
    let name = match params.get("service") {
        Some((name, _)) => name.clone(),
        None => match inputs.env.get("PGSERVICE").filter(|s| !s.is_empty()) {
            Some(name) => name.clone(),
            None => return Ok(()),
        },
    };
    let user_file = match inputs.env.get("PGSERVICEFILE") {
        Some(f) => Some(PathBuf::from(f)),
        None => inputs.home().map(|h| h.join(".pg_service.conf")),
    };
    let sysconf = inputs
        .env
        .get("PGSYSCONFDIR")
        .map_or(SYSCONFDIR, String::as_str);
    let files: Vec<PathBuf> = user_file
        .into_iter()
        .chain([Path::new(sysconf).join("pg_service.conf")])
        .collect();
    for file in &files {
        let text = match crate::smallfile::read_to_string(file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(unreadable(file, e)),
        };
        let origin = format!("service {name:?} in {}", file.display());
        if let Some(section) = service_section(&text, &name, &origin)? {
            for (key, (value, origin)) in section {
                params.entry(key).or_insert((value, origin));
            }
            return Ok(());
        }
    }
    Err(ConnInfoError::NoService { name, files })
}

fn unreadable(path: &Path, e: std::io::Error) -> ConnInfoError {
    ConnInfoError::Unreadable {
        path: path.to_path_buf(),
        source: std::sync::Arc::new(e),
    }
}

/// The `[name]` section of a service file as parameters, `None` when there is none.
fn service_section(text: &str, name: &str, origin: &str) -> Result<Option<Params>, ConnInfoError> {
    let mut found: Option<Params> = None;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if found.is_some() {
                break;
            }
            if section == name {
                found = Some(Params::new());
            }
            continue;
        }
        let Some(params) = found.as_mut() else {
            continue;
        };
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| ConnInfoError::Malformed {
                origin: origin.into(),
                problem: format!("line {line:?} is not key=value"),
            })?;
        let key = key.trim();
        check_name(key, origin)?;
        params.insert(key.into(), (value.trim().into(), origin.into()));
    }
    Ok(found)
}

/// The password file (`passfile`, `PGPASSFILE`, else `~/.pgpass`): the first line matching
/// the first host, port, database and user; ignored, as by libpq, when group or others may
/// read it. A Unix-socket host in the default directory matches `localhost`.
fn password_from_file(
    params: &Params,
    inputs: &Inputs<'_>,
) -> Result<Option<(String, String)>, ConnInfoError> {
    let path = match params.get("passfile") {
        Some((p, _)) => PathBuf::from(p),
        None => match inputs.home() {
            Some(home) => home.join(".pgpass"),
            None => return Ok(None),
        },
    };
    let text = match std::fs::metadata(&path) {
        Ok(meta)
            if meta.is_file()
                && std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077 == 0 =>
        {
            crate::smallfile::read_to_string(&path).map_err(|e| unreadable(&path, e))?
        }
        _ => return Ok(None),
    };
    let first = |name: &str| {
        params
            .get(name)
            .map_or("", |(v, _)| v.split(',').next().unwrap_or(""))
    };
    let host = match first("host") {
        "" => first("hostaddr"),
        h if h == SOCKET_DIRS[0] => "localhost",
        h => h,
    };
    let wanted = [host, first("port"), first("dbname"), first("user")];
    let origin = path.display().to_string();
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(pgpass_fields)
        .find(|f| f.len() == 5 && (0..4).all(|i| f[i] == "*" || f[i] == wanted[i]))
        .map(|f| (f[4].clone(), origin)))
}

/// One `.pgpass` line's fields; `\` escapes `:` and `\`.
fn pgpass_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields
                .last_mut()
                .into_iter()
                .for_each(|f| f.extend(chars.next())),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().into_iter().for_each(|f| f.push(c)),
        }
    }
    fields
}

/// The parameters as a `tokio_postgres::Config`, each value checked.
fn build(params: &Params) -> Result<tokio_postgres::Config, ConnInfoError> {
    let get = |name: &str| params.get(name).map(|(v, o)| (v.as_str(), o.as_str()));
    let mut config = tokio_postgres::Config::new();
    add_hosts(&mut config, params)?;
    if let Some((user, _)) = get("user") {
        config.user(user);
    }
    if let Some((dbname, _)) = get("dbname") {
        config.dbname(dbname);
    }
    if let Some((password, _)) = get("password") {
        config.password(password);
    }
    if let Some((options, _)) = get("options") {
        config.options(options);
    }
    let app = get("application_name").or(get("fallback_application_name"));
    config.application_name(app.map_or("vamsa-migrate", |(a, _)| a));
    // TLS is negotiated by db::connect before tokio-postgres sees the stream.
    config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    if let Some(timeout) = connect_timeout(get("connect_timeout"))? {
        config.connect_timeout(timeout);
    }
    config.target_session_attrs(target_session_attrs(get("target_session_attrs"))?);
    if let Some((value, origin)) = get("channel_binding") {
        match value {
            "disable" | "prefer" => {}
            _ => return Err(unsupported("channel_binding", origin, "channel binding needs the TLS session inside the driver; use channel_binding=prefer")),
        }
    }
    if let Some((value, origin)) = get("sslnegotiation") {
        if value != "postgres" {
            return Err(unsupported(
                "sslnegotiation",
                origin,
                "only sslnegotiation=postgres (PostgreSQL 17's default) is supported",
            ));
        }
    }
    Ok(config)
}

fn unsupported(name: &str, origin: &str, why: &'static str) -> ConnInfoError {
    ConnInfoError::Unsupported {
        name: name.into(),
        origin: origin.into(),
        why: Some(why),
    }
}

fn bad_value(name: &str, origin: &str, problem: String) -> ConnInfoError {
    ConnInfoError::BadValue {
        name: name.into(),
        origin: origin.into(),
        problem,
    }
}

/// `host`, `hostaddr` and `port` as parallel lists (libpq: one port for all, or one each).
fn add_hosts(config: &mut tokio_postgres::Config, params: &Params) -> Result<(), ConnInfoError> {
    let list = |name: &str| -> (Vec<&str>, &str) {
        match params.get(name) {
            Some((v, o)) if !v.is_empty() => (v.split(',').map(str::trim).collect(), o.as_str()),
            _ => (Vec::new(), ""),
        }
    };
    let ((hosts, _), (addrs, addr_origin), (ports, port_origin)) =
        (list("host"), list("hostaddr"), list("port"));
    let count = hosts.len().max(addrs.len());
    if !hosts.is_empty() && !addrs.is_empty() && hosts.len() != addrs.len() {
        return Err(bad_value(
            "hostaddr",
            addr_origin,
            format!(
                "{} addresses for {} hosts: give one per host",
                addrs.len(),
                hosts.len()
            ),
        ));
    }
    if ports.len() > 1 && ports.len() != count {
        return Err(bad_value(
            "port",
            port_origin,
            format!(
                "{} ports for {count} hosts: give one, or one per host",
                ports.len()
            ),
        ));
    }
    for host in &hosts {
        match host {
            h if h.starts_with('/') => config.host_path(h),
            h => config.host(*h),
        };
    }
    for addr in &addrs {
        let ip = addr.parse().map_err(|_| {
            bad_value(
                "hostaddr",
                addr_origin,
                format!("{addr:?} is not an IP address"),
            )
        })?;
        config.hostaddr(ip);
    }
    for port in ports {
        let n = port.parse::<u16>().ok().filter(|p| *p > 0);
        config.port(n.ok_or_else(|| {
            bad_value(
                "port",
                port_origin,
                format!("{port:?} is not a port number (1-65535)"),
            )
        })?);
    }
    Ok(())
}

/// libpq: whole seconds; zero or less waits for ever; 1 is taken as 2.
fn connect_timeout(value: Option<(&str, &str)>) -> Result<Option<Duration>, ConnInfoError> {
    let Some((text, origin)) = value else {
        return Ok(Some(DEFAULT_CONNECT_TIMEOUT));
    };
    let seconds: i64 = text.trim().parse().map_err(|_| {
        bad_value(
            "connect_timeout",
            origin,
            format!("{text:?} is not a whole number of seconds"),
        )
    })?;
    Ok((seconds > 0).then(|| Duration::from_secs(seconds.max(2) as u64)))
}

fn target_session_attrs(value: Option<(&str, &str)>) -> Result<TargetSessionAttrs, ConnInfoError> {
    match value {
        None | Some(("any", _)) => Ok(TargetSessionAttrs::Any),
        Some(("read-write" | "primary", _)) => Ok(TargetSessionAttrs::ReadWrite),
        Some(("read-only" | "standby" | "prefer-standby", origin)) => Err(unsupported("target_session_attrs", origin, "migrations must run on a writable primary: use any or read-write")),
        Some((other, origin)) => Err(bad_value("target_session_attrs", origin, format!("{other:?} is not one of any, read-write, read-only, primary, standby, prefer-standby"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::config::Host;

    fn resolve_with(
        url: &str,
        env: &[(&str, &str)],
    ) -> Result<tokio_postgres::Config, ConnInfoError> {
        params_with(url, env).map(|p| p.driver)
    }

    fn params_with(url: &str, env: &[(&str, &str)]) -> Result<ConnParams, ConnInfoError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let inputs = Inputs {
            env: &env,
            os_user: "alice".into(),
            password_override: None,
        };
        resolve(url, &inputs)
    }

    #[test]
    fn a_uri_without_host_user_or_database_takes_libpqs_defaults() {
        let c = resolve_with("postgresql:///vamsa?port=5433", &[]).unwrap();
        assert!(
            matches!(&c.get_hosts()[0], Host::Unix(p) if SOCKET_DIRS.iter().any(|d| p == Path::new(d)))
        );
        assert_eq!(c.get_ports(), [5433]);
        assert_eq!(c.get_user(), Some("alice"));
        assert_eq!(c.get_dbname(), Some("vamsa"));
        let c = resolve_with("postgresql://bob@", &[]).unwrap();
        assert_eq!((c.get_user(), c.get_dbname()), (Some("bob"), Some("bob")));
        assert_eq!(c.get_connect_timeout(), Some(&DEFAULT_CONNECT_TIMEOUT));
        assert_eq!(c.get_application_name(), Some("vamsa-migrate"));
    }

    #[test]
    fn the_url_wins_over_the_environment_which_fills_the_rest() {
        let env = [
            ("PGHOST", "db1,db2"),
            ("PGPORT", "6000"),
            ("PGUSER", "env"),
            ("PGPASSWORD", "pw"),
            ("PGCONNECT_TIMEOUT", "1"),
            ("PGSSLMODE", "disable"),
        ];
        let c = resolve_with("postgresql://url@/vamsa", &env).unwrap();
        assert_eq!(
            c.get_hosts(),
            [Host::Tcp("db1".into()), Host::Tcp("db2".into())]
        );
        assert_eq!(c.get_ports(), [6000]);
        assert_eq!(c.get_user(), Some("url"));
        assert_eq!(c.get_password(), Some(&b"pw"[..]));
        // libpq takes 1 s as 2 s.
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(2)));
        let tls = params_with("postgresql://url@/vamsa", &env).unwrap().tls;
        assert_eq!(tls.mode, SslMode::Disable);
        let c = resolve_with("host=h connect_timeout=0", &[]).unwrap();
        assert_eq!(c.get_connect_timeout(), None);
    }

    #[test]
    fn uri_and_key_value_forms_decode_alike() {
        let uri = resolve_with("postgres://us%40r:p%40ss%3Aw@[::1]:5433,h2:5434/d%20b?application_name=app&sslmode=require", &[]).unwrap();
        assert_eq!(uri.get_user(), Some("us@r"));
        assert_eq!(uri.get_password(), Some(&b"p@ss:w"[..]));
        assert_eq!(
            uri.get_hosts(),
            [Host::Tcp("::1".into()), Host::Tcp("h2".into())]
        );
        assert_eq!(uri.get_ports(), [5433, 5434]);
        assert_eq!(uri.get_dbname(), Some("d b"));
        assert_eq!(uri.get_application_name(), Some("app"));
        let kv = resolve_with(
            "user = 'us@r' password='p@ss:w' host=/run/postgresql dbname='d b' sslmode=require",
            &[],
        )
        .unwrap();
        assert_eq!(kv.get_password(), Some(&b"p@ss:w"[..]));
        assert_eq!(kv.get_hosts(), [Host::Unix("/run/postgresql".into())]);
        let escaped = resolve_with(r"password='it\'s' host=h", &[]).unwrap();
        assert_eq!(escaped.get_password(), Some(&b"it's"[..]));
    }

    #[test]
    fn the_password_file_matches_in_order_with_wildcards_and_escapes() {
        let home = tempfile::tempdir().unwrap();
        let file = home.path().join(".pgpass");
        std::fs::write(
            &file,
            "h:5432:other:*:no\n*:*:vamsa:vamsa:a\\:b\\\\c\nh:*:*:*:late\n",
        )
        .unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let env = [("HOME", home.path().to_str().unwrap())];
        let c = resolve_with("host=h user=vamsa dbname=vamsa", &env).unwrap();
        assert_eq!(c.get_password(), Some(&b"a:b\\c"[..]));
        let c = resolve_with("host=h user=x dbname=y", &env).unwrap();
        assert_eq!(c.get_password(), Some(&b"late"[..]));
        let c = resolve_with("host=h user=x dbname=y password=given", &env).unwrap();
        assert_eq!(c.get_password(), Some(&b"given"[..]));
    }

    #[test]
    fn malformed_settings_name_the_part_and_never_the_password() {
        let err = |url: &str| resolve_with(url, &[]).unwrap_err().to_string();
        assert_eq!(err("postgresql://u:se#cret@h/d"), "the password in database_url contains an unescaped '#': write it as %23 (percent-encode each of @ : / ? # % in the user name and password)");
        assert!(err("postgresql://u:se?cret@h/d").contains("unescaped '?': write it as %3F"));
        assert!(err("postgresql://h/d?nope=1").contains("unknown parameter \"nope\""));
        assert!(err("host=h sslpassword=x")
            .contains("parameter \"sslpassword\" in database_url is not supported"));
        assert!(err("host=h,i port=1,2,3").contains("3 ports for 2 hosts"));
        assert!(err("host=h hostaddr=not-an-ip").contains("\"not-an-ip\" is not an IP address"));
        assert_eq!(err("host=h sslmode=require sslrootcert=system"), "sslmode in database_url: weak sslmode \"require\" may not be used with sslrootcert=system (use \"verify-full\")");
        assert!(err("host=h sslmode=verify").contains("\"verify\" is not one of disable"));
        assert!(err("host=h target_session_attrs=standby").contains("writable primary"));
        assert!(err("host h").contains("missing \"=\" after \"host\""));
        for url in ["postgresql://u:se#cret@h/d", "postgresql://u:se%zzcret@h/d"] {
            assert!(!err(url).contains("cret"), "{}", err(url));
        }
    }

    #[test]
    fn tls_settings_take_libpqs_defaults_and_variables() {
        let home = [("HOME", "/home/a")];
        let tls = params_with("host=h", &home).unwrap().tls;
        let dot = Path::new("/home/a/.postgresql");
        assert_eq!(tls.mode, SslMode::Prefer);
        assert_eq!(tls.root_cert, Some(RootCert::File(dot.join("root.crt"))));
        assert_eq!(tls.cert, Some(dot.join("postgresql.crt")));
        assert_eq!(tls.key, Some(dot.join("postgresql.key")));
        let env = [
            ("PGSSLMODE", "verify-ca"),
            ("PGSSLROOTCERT", "/ca.pem"),
            ("PGSSLCERT", "/c.crt"),
            ("PGSSLKEY", "/c.key"),
        ];
        let tls = params_with("host=h", &env).unwrap().tls;
        assert_eq!(tls.mode, SslMode::VerifyCa);
        assert_eq!(tls.root_cert, Some(RootCert::File("/ca.pem".into())));
        assert_eq!(
            (tls.cert.unwrap(), tls.key.unwrap()),
            ("/c.crt".into(), "/c.key".into())
        );
        let tls = params_with("postgresql://h/d?sslmode=verify-full&sslrootcert=/x", &env)
            .unwrap()
            .tls;
        assert_eq!(
            (tls.mode, tls.root_cert),
            (SslMode::VerifyFull, Some(RootCert::File("/x".into())))
        );
        // libpq 16: sslrootcert=system makes verify-full the default.
        let tls = params_with("host=h sslrootcert=system", &[]).unwrap().tls;
        assert_eq!(
            (tls.mode, tls.root_cert),
            (SslMode::VerifyFull, Some(RootCert::System))
        );
        assert_eq!(params_with("host=h", &[]).unwrap().tls.root_cert, None);
    }
}
