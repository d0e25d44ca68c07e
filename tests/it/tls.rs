//! TLS as libpq does it, against a real server with `ssl = on`: a throwaway CA made at test
//! time (openssl CLI) signs the server's certificate (DNS:localhost, IP:127.0.0.1) and a
//! client certificate; another CA is the wrong one. The server's own pg_hba file lets
//! `certuser` in only over TLS with a client certificate (`cert`), everyone else on trust.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::support::*;

/// The TLS cluster of this module and the files of its CAs.
struct Tls {
    cluster: TempCluster,
    dir: tempfile::TempDir,
}

static TLS: OnceLock<Tls> = OnceLock::new();

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `name.crt`/`name.key` for `cn`, signed by the CA `ca`, with the extensions in `ext`.
fn make_leaf(dir: &Path, ca: &str, name: &str, cn: &str, ext: &str) {
    let (key, csr, crt, extfile) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
        format!("{name}.ext"),
    );
    std::fs::write(dir.join(&extfile), ext).expect("write the extensions");
    let subj = format!("/CN={cn}");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut req = vec!["req"];
    req.extend(ec);
    req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
    openssl(dir, &req);
    let (ca_crt, ca_key) = (format!("{ca}.crt"), format!("{ca}.key"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &crt,
            "-extfile",
            &extfile,
        ],
    );
}

fn tls() -> &'static Tls {
    TLS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a directory for the CAs");
        let d = dir.path();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for ca in ["ca", "other-ca"] {
            let subj = format!("/CN=vamsa test {ca}");
            let (key, crt) = (format!("{ca}.key"), format!("{ca}.crt"));
            openssl(
                d,
                &[
                    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", &key, "-out", &crt, "-days", "2", "-subj", &subj,
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                ],
            );
        }
        make_leaf(d, "ca", "server", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
        make_leaf(d, "ca", "client", "certuser", "extendedKeyUsage=clientAuth\n");
        for f in ["ca.crt", "other-ca.crt", "server.crt", "client.crt"] {
            std::fs::set_permissions(d.join(f), std::fs::Permissions::from_mode(0o644))
                .expect("chmod");
        }
        std::fs::set_permissions(d.join("client.key"), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        // The server's key: the server runs as `postgres` and wants it private (0600).
        let server_key = d.join("server.key");
        if let Some(pg) = nix::unistd::User::from_name("postgres").ok().flatten() {
            nix::unistd::chown(&server_key, Some(pg.uid), Some(pg.gid)).expect("chown");
        }
        let hba = d.join("pg_hba.conf");
        std::fs::write(&hba, "local all all trust\nhostssl all certuser 127.0.0.1/32 cert\nhostnossl all certuser 127.0.0.1/32 reject\nhost all all 127.0.0.1/32 trust\n").expect("write pg_hba.conf");
        std::fs::set_permissions(&hba, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let path = |f: &str| d.join(f).display().to_string();
        let settings = [
            ("ssl", "on".to_string()),
            ("ssl_cert_file", path("server.crt")),
            ("ssl_key_file", path("server.key")),
            ("ssl_ca_file", path("ca.crt")),
            ("hba_file", path("pg_hba.conf")),
        ];
        let cluster = own_cluster(ClusterOptions {
            settings: settings.map(|(k, v)| (k.to_string(), v)).to_vec(),
            ..ClusterOptions::default()
        });
        cluster
            .psql("postgres", "CREATE ROLE certuser LOGIN SUPERUSER")
            .expect("create certuser");
        Tls { cluster, dir }
    })
}

impl Tls {
    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A key=value `database_url` to this server's `postgres` database with `extra` settings.
    fn url(&self, host: &str, extra: &str) -> String {
        format!(
            "host={host} port={} user=postgres dbname=postgres {extra}",
            self.cluster.port()
        )
    }
}

/// `status` with `url`, in a home without `~/.postgresql` (libpq's default files).
fn status(url: &str) -> Run {
    let home = tempfile::tempdir().expect("a home");
    let folder = Folder::new(&[]);
    cli()
        .env("HOME", home.path())
        .database_url(url)
        .migrations_dir(folder.path())
        .arg("status")
        .run()
}

#[track_caller]
fn assert_refused(run: &Run, message: &str, cause: &str) {
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(run.stderr.contains(message), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("Likely cause: {cause}")),
        "{}",
        run.stderr
    );
}

#[test]
fn the_right_ca_and_host_connect_under_verify_full_and_verify_ca() {
    let t = tls();
    let ca = t.file("ca.crt").display().to_string();
    for (host, mode) in [
        ("localhost", "verify-full"),
        // An IP address is checked against the certificate's IP subject alternative names.
        ("127.0.0.1", "verify-full"),
        ("127.0.0.1", "verify-ca"),
    ] {
        status(&t.url(host, &format!("sslmode={mode} sslrootcert={ca}"))).ok();
    }
    // The variables libpq reads do the same.
    let home = tempfile::tempdir().expect("a home");
    cli()
        .env("HOME", home.path())
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", &ca)
        .database_url(&t.url("localhost", ""))
        .migrations_dir(Folder::new(&[]).path())
        .arg("status")
        .run()
        .ok();
}

#[test]
fn a_wrong_ca_is_refused_saying_the_chain_could_not_be_verified() {
    let t = tls();
    let other = t.file("other-ca.crt").display().to_string();
    let run = status(&t.url(
        "localhost",
        &format!("sslmode=verify-ca sslrootcert={other}"),
    ));
    assert_refused(
        &run,
        &format!("the server's certificate chain could not be verified against the root certificates in {other} (sslmode=verify-ca): it was not issued by any of them (unknown issuer)"),
        "The server's certificate does not lead to a root certificate that sslrootcert names",
    );
    // libpq's rule: `require` with a root certificate file checks the chain as verify-ca does.
    let run = status(&t.url("localhost", &format!("sslmode=require sslrootcert={other}")));
    assert_refused(
        &run,
        "(sslmode=require checks the chain when a root certificate file exists, as libpq does)",
        "The server's certificate does not lead to a root certificate",
    );
    // Without a root certificate file, `require` encrypts without checking (libpq's meaning).
    status(&t.url("localhost", "sslmode=require")).ok();
    // verify-ca without any root certificate file is refused before the handshake.
    let run = status(&t.url("localhost", "sslmode=verify-ca"));
    assert_refused(
        &run,
        "root certificate file",
        "A root certificate, client certificate or private key file",
    );
}

#[test]
fn a_wrong_host_name_is_refused_under_verify_full_but_not_under_verify_ca() {
    let t = tls();
    let ca = t.file("ca.crt").display().to_string();
    // libpq checks `host` while connecting to `hostaddr`.
    let wrong = format!("hostaddr=127.0.0.1 sslrootcert={ca}");
    let run = status(&t.url("db.example", &format!("{wrong} sslmode=verify-full")));
    assert_refused(
        &run,
        "sslmode=verify-full: the host-name check failed: the server's certificate is not valid for \"db.example\"; it holds DnsName(\"localhost\"), IpAddress(127.0.0.1)",
        "The server's certificate does not name the host in database_url",
    );
    status(&t.url("db.example", &format!("{wrong} sslmode=verify-ca"))).ok();
}

#[test]
fn cert_authentication_connects_with_the_client_certificate_and_is_refused_without() {
    let t = tls();
    let (ca, crt, key) = (t.file("ca.crt"), t.file("client.crt"), t.file("client.key"));
    let base = format!(
        "host=localhost port={} user=certuser dbname=postgres sslmode=verify-full sslrootcert={}",
        t.cluster.port(),
        ca.display()
    );
    let with_cert = format!("{base} sslcert={} sslkey={}", crt.display(), key.display());
    status(&with_cert).ok();
    let run = status(&base);
    assert_refused(
        &run,
        "connection requires a valid client certificate",
        "The user does not exist, or pg_hba.conf has no entry",
    );
    // libpq's rule for the key file: no group or world access when it is ours.
    let open_key = t.dir.path().join("open.key");
    std::fs::copy(&key, &open_key).expect("copy the key");
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let run = status(&format!(
        "{base} sslcert={} sslkey={}",
        crt.display(),
        open_key.display()
    ));
    assert_refused(
        &run,
        &format!("private key file \"{}\" has group or world access (mode 0644); file must have permissions u=rw (0600) or less", open_key.display()),
        "A root certificate, client certificate or private key file",
    );
    let secret = std::fs::read_to_string(&key).expect("read the key");
    for line in secret.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!run.stderr.contains(line), "{}", run.stderr);
    }
}

/// pg_dump gets the same TLS settings: as `certuser` the server lets it in only over TLS with
/// the client certificate, and the dump is there.
#[test]
fn a_backup_runs_pg_dump_under_verify_full_with_the_client_certificate() {
    let t = tls();
    let url = format!(
        "host=localhost port={} user=certuser dbname=postgres sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
        t.cluster.port(),
        t.file("ca.crt").display(),
        t.file("client.crt").display(),
        t.file("client.key").display()
    );
    let backups = tempfile::tempdir().expect("a backup folder");
    let home = tempfile::tempdir().expect("a home");
    let run = cli()
        .env("HOME", home.path())
        .database_url(&url)
        .backup_dir(backups.path())
        .arg("backup")
        .run();
    run.ok();
    let dumps: Vec<_> = std::fs::read_dir(backups.path())
        .expect("list backups")
        .flatten()
        .collect();
    assert_eq!(dumps.len(), 1, "{run:#?}");
}

/// `sslrootcert=system`: the system's bundle (where OpenSSL looks, `SSL_CERT_FILE` first) holds
/// the roots, and `verify-full` is the default mode (libpq 16).
#[test]
fn sslrootcert_system_reads_the_bundle_openssl_uses_and_defaults_to_verify_full() {
    let t = tls();
    let home = tempfile::tempdir().expect("a home");
    let run = |host: &str| {
        cli()
            .env("HOME", home.path())
            .env("SSL_CERT_FILE", t.file("ca.crt"))
            .database_url(&t.url(host, "hostaddr=127.0.0.1 sslrootcert=system"))
            .migrations_dir(Folder::new(&[]).path())
            .arg("status")
            .run()
    };
    run("localhost").ok();
    assert_refused(
        &run("db.example"),
        "sslmode=verify-full: the host-name check failed",
        "The server's certificate does not name the host",
    );
}

/// libpq's second tries: `allow` goes on with TLS when the server refuses the session without
/// it (here pg_hba.conf lets `certuser` in only over TLS); `prefer` goes on without TLS when
/// the handshake fails (here the chain check against a wrong `~/.postgresql/root.crt`).
#[test]
fn allow_retries_with_tls_and_prefer_retries_without_as_libpq_does() {
    let t = tls();
    let url = format!(
        "host=localhost port={} user=certuser dbname=postgres sslmode=allow sslcert={} sslkey={}",
        t.cluster.port(),
        t.file("client.crt").display(),
        t.file("client.key").display()
    );
    status(&url).ok();
    let home = tempfile::tempdir().expect("a home");
    let dot = home.path().join(".postgresql");
    std::fs::create_dir(&dot).expect("create ~/.postgresql");
    std::fs::copy(t.file("other-ca.crt"), dot.join("root.crt")).expect("copy the wrong CA");
    let with_home = |mode: &str| {
        cli()
            .env("HOME", home.path())
            .database_url(&t.url("localhost", &format!("sslmode={mode}")))
            .migrations_dir(Folder::new(&[]).path())
            .arg("status")
            .run()
    };
    with_home("prefer").ok();
    // `require` has no plain retry: the root file makes it check the chain, which fails.
    assert_refused(
        &with_home("require"),
        "could not be verified against the root certificates in",
        "The server's certificate does not lead to a root certificate",
    );
}
