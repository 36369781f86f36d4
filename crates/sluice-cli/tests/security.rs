//! The binary over Apache Kafka's own TLS and SASL listeners (`scripts/kafka.sh --sasl --tls`):
//! `produce`, `consume` and `run` over TLS, mutual TLS, SASL PLAIN over TLS, SCRAM-SHA-256/512
//! and OAUTHBEARER, configured by flags, the environment, kcat-style `-X` properties and a job
//! file's `[security]`; and the errors of a wrong password, an unknown CA, a wrong server name
//! and a PLAIN password over plaintext. Tansu has no TLS listener and keeps no SASL credentials:
//! there these tests say so and skip.

#![allow(clippy::unwrap_used)]

use sluice_testkit as common;

mod cli;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cli::{lines, ok, sluice_env};
use common::{unique, Kind};

/// The shared Kafka broker's listeners and files (`None` on Tansu).
struct Listeners {
    plain: String,
    sasl_plaintext: String,
    tls: String,
    mtls: String,
    sasl_tls: String,
    ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn listeners() -> Option<Listeners> {
    let broker = common::shared();
    if broker.kind != Kind::Kafka {
        eprintln!("SKIPPED on Tansu: it has no TLS listener and its memory storage keeps no SASL credentials");
        return None;
    }
    let tls = broker.tls.clone().expect("the shared Kafka broker has TLS");
    Some(Listeners {
        plain: broker.addr.clone(),
        sasl_plaintext: broker.sasl_addr.clone().expect("and SASL"),
        tls: tls.addr,
        mtls: tls.mutual_addr,
        sasl_tls: broker.sasl_tls_addr.clone().expect("and SASL over TLS"),
        ca: tls.ca,
        client_cert: tls.client_cert,
        client_key: tls.client_key,
    })
}

fn failure(output: &Output) -> (Option<i32>, String) {
    assert!(!output.status.success(), "succeeded: {}", String::from_utf8_lossy(&output.stdout));
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A way to connect: its name, its flags and its environment.
type Way<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, &'a str)>);

#[test]
fn produce_and_consume_over_tls_mutual_tls_and_every_sasl_mechanism() {
    let Some(l) = listeners() else { return };
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "alice-secret\n").unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, common::unsecured_jwt("bob", 3600)).unwrap();
    let topic = unique("secure");
    ok(&sluice_env(&["topics", "-b", &l.plain, "create", &topic], &[], ""));

    let ca = path(&l.ca);
    let ca_property = format!("ssl.ca.location={ca}");
    let bootstrap_property = format!("bootstrap.servers={}", l.sasl_tls);
    let ways: Vec<Way<'_>> = vec![
        ("tls", vec!["-b", &l.tls, "--tls-ca", ca], vec![]),
        ("tls-from-env", vec!["-b", &l.tls], vec![("SLUICE_TLS_CA", ca)]),
        (
            "mutual-tls",
            vec!["-b", &l.mtls, "--tls-ca", ca, "--tls-cert", path(&l.client_cert), "--tls-key", path(&l.client_key)],
            vec![],
        ),
        (
            "plain-over-tls",
            vec![
                "-b",
                &l.sasl_tls,
                "--tls-ca",
                ca,
                "--sasl-mechanism",
                "PLAIN",
                "--sasl-username",
                "alice",
                "--sasl-password-file",
                path(&password_file),
            ],
            vec![],
        ),
        (
            "scram-sha-256-from-env",
            vec!["-b", &l.sasl_tls, "--tls-ca", ca],
            vec![
                ("SLUICE_SASL_MECHANISM", "SCRAM-SHA-256"),
                ("SLUICE_SASL_USERNAME", "alice"),
                ("SLUICE_SASL_PASSWORD", "alice-secret"),
            ],
        ),
        (
            "scram-sha-512-kcat-style",
            vec![
                "-X",
                "security.protocol=SASL_SSL",
                "-X",
                "sasl.mechanisms=SCRAM-SHA-512",
                "-X",
                "sasl.username=alice",
                "-X",
                "sasl.password=alice-secret",
                "-X",
                &ca_property,
                "-X",
                &bootstrap_property,
            ],
            vec![],
        ),
        (
            "oauthbearer-token-file",
            vec![
                "-b",
                &l.sasl_tls,
                "--tls-ca",
                ca,
                "--sasl-mechanism",
                "OAUTHBEARER",
                "--sasl-token-file",
                path(&token_file),
            ],
            vec![],
        ),
    ];
    let mut produced = Vec::new();
    for (name, flags, env) in &ways {
        let mut args = vec!["produce", "-t", topic.as_str()];
        args.extend(flags.iter().copied());
        ok(&sluice_env(&args, env, &format!("via {name}\n")));
        produced.push(format!("via {name}"));
        let mut args = vec!["consume", "-t", topic.as_str(), "-o", "beginning", "-e"];
        args.extend(flags.iter().copied());
        let consumed = ok(&sluice_env(&args, env, ""));
        assert_eq!(lines(&consumed), produced, "{name}");
    }
}

#[test]
fn a_wrong_password_an_unknown_ca_a_wrong_name_and_plain_over_plaintext_fail_naming_the_cause() {
    let Some(l) = listeners() else { return };
    let ca = path(&l.ca);
    let list = |flags: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["topics"];
        args.extend(flags);
        args.push("list");
        sluice_env(&args, env, "")
    };
    let scram = ["--sasl-mechanism", "SCRAM-SHA-512", "--sasl-username", "alice"];

    let wrong_password =
        list(&[&["-b", &l.sasl_tls, "--tls-ca", ca][..], &scram].concat(), &[("SLUICE_SASL_PASSWORD", "wrong")]);
    let (code, stderr) = failure(&wrong_password);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("did not accept SASL SCRAM-SHA-512 authentication"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .args(["-keyout", path(&dir.path().join("other-ca.key")), "-out", path(&other_ca)])
        .args(["-days", "2", "-subj", "/CN=another CA"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let (_, stderr) = failure(&list(&["-b", &l.tls, "--tls-ca", path(&other_ca)], &[]));
    assert!(stderr.contains("not signed by a CA this client trusts"), "{stderr}");

    let (_, stderr) = failure(&list(&["-b", &l.tls, "--tls-ca", ca, "--tls-server-name", "kafka.example.com"], &[]));
    assert!(stderr.contains("not valid for the name \"kafka.example.com\""), "{stderr}");

    // Without --tls-ca, only the public CAs are trusted: the test CA is not one.
    let (_, stderr) = failure(&list(&["-b", &l.tls, "--tls"], &[]));
    assert!(stderr.contains("not signed by a CA this client trusts"), "{stderr}");

    let plain = ["-b", &l.sasl_plaintext, "--sasl-mechanism", "PLAIN", "--sasl-username", "alice"];
    let password = [("SLUICE_SASL_PASSWORD", "alice-secret")];
    let (_, stderr) = failure(&list(&plain, &password));
    assert!(stderr.contains("refusing to send a PLAIN password over a connection without TLS"), "{stderr}");
    ok(&list(&[&plain[..], &["--sasl-allow-plain-without-tls"]].concat(), &password));

    let (code, stderr) = failure(&list(
        &["-b", &l.sasl_tls, "--tls-ca", ca, "--sasl-mechanism", "PLAIN", "--sasl-username", "alice"],
        &[],
    ));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("needs a password: --sasl-password-file FILE, or the environment's SLUICE_SASL_PASSWORD"),
        "{stderr}"
    );
}

/// A job file reading `input` from `brokers` and publishing its counts per item to `output` in
/// transactions, with this `[security]` table.
fn secure_job(dir: &Path, brokers: &str, input: &str, output: &str, security: &str) -> PathBuf {
    let job = dir.join(format!("{output}.toml"));
    std::fs::write(
        &job,
        format!(
            r#"name = "secure-counts"

[source]
brokers = ["{brokers}"]
topics = ["{input}"]
start = "earliest"
batch_interval = "200ms"

[format]
type = "csv"
columns = ["user", "item", "time"]

[aggregate]
key = "item"
function = "count"

[checkpoint]
dir = "{checkpoint}"

[security]
{security}

[[sink]]
type = "kafka"
topic = "{output}"
transactional = true
"#,
            checkpoint = dir.join(format!("{output}-checkpoint")).display(),
        ),
    )
    .unwrap();
    job
}

#[test]
fn a_job_runs_over_tls_mutual_tls_and_every_sasl_mechanism_set_in_its_job_file() {
    let Some(l) = listeners() else { return };
    let input = unique("secure-input");
    ok(&sluice_env(&["topics", "-b", &l.plain, "create", &input, "--partitions", "2"], &[], ""));
    let clicks: String = (0..300).map(|i| format!("user-{i},item-{},{}\n", i % 3, 1_700_000_000_000_i64 + i)).collect();
    ok(&sluice_env(&["produce", "-b", &l.plain, "-t", &input], &[], &clicks));
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "alice-secret\n").unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, common::unsecured_jwt("bob", 3600)).unwrap();

    let ca = format!("ca = {:?}", l.ca.display().to_string());
    let user = "username = \"alice\"\npassword_env = \"SECURE_JOB_PASSWORD\"";
    let ways = [
        ("tls", &l.tls, ca.clone()),
        (
            "mutual-tls",
            &l.mtls,
            format!(
                "{ca}\ncertificate = {:?}\nkey = {:?}",
                l.client_cert.display().to_string(),
                l.client_key.display().to_string()
            ),
        ),
        (
            "plain",
            &l.sasl_tls,
            format!(
                "{ca}\nsasl_mechanism = \"PLAIN\"\nusername = \"alice\"\npassword_file = {:?}",
                path(&password_file)
            ),
        ),
        ("scram-sha-256", &l.sasl_tls, format!("{ca}\nsasl_mechanism = \"SCRAM-SHA-256\"\n{user}")),
        ("scram-sha-512", &l.sasl_tls, format!("{ca}\nsasl_mechanism = \"SCRAM-SHA-512\"\n{user}")),
        (
            "oauthbearer",
            &l.sasl_tls,
            format!("{ca}\nsasl_mechanism = \"OAUTHBEARER\"\ntoken_file = {:?}", path(&token_file)),
        ),
    ];
    for (name, brokers, security) in ways {
        let output = unique(&format!("secure-{name}"));
        ok(&sluice_env(&["topics", "-b", &l.plain, "create", &output], &[], ""));
        let job = secure_job(dir.path(), brokers, &input, &output, &security);
        let job = path(&job);
        if name == "scram-sha-512" {
            let described = ok(&sluice_env(&["run", job, "--check"], &[], ""));
            let expected = format!("TLS (graviola) trusting {}, SASL SCRAM-SHA-512", l.ca.display());
            assert!(described.contains(&expected), "{described}");
            let (code, stderr) = failure(&sluice_env(&["run", job, "--max-batches", "1"], &[], ""));
            assert_eq!(code, Some(1), "{stderr}");
            assert!(stderr.contains("SECURE_JOB_PASSWORD is not set"), "{stderr}");
        }
        ok(&sluice_env(&["run", job, "--max-batches", "3", "--quiet"], &[("SECURE_JOB_PASSWORD", "alice-secret")], ""));
        let counts = ok(&sluice_env(
            &[
                "consume",
                "-b",
                &l.tls,
                "--tls-ca",
                path(&l.ca),
                "-t",
                &output,
                "-o",
                "beginning",
                "-e",
                "--read-committed",
            ],
            &[],
            "",
        ));
        let mut total = 0;
        for line in lines(&counts) {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            total += row["count"].as_i64().unwrap_or_else(|| panic!("{name}: {line}"));
        }
        assert_eq!(total, 300, "{name}: {counts}");
    }
}
