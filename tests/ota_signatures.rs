//! Package signatures made by independent tools: Debian's `openssl` (`dgst -sign`,
//! `pkeyutl`) and Python's `cryptography`, verified by `edge-agent ota install`; and the
//! agent's own `ota keygen` / `ota pack --key` signatures verified by `openssl`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use support::ota::{make_package, openssl, ota, status, stderr};

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A private key made by openssl and its public key (PEM).
fn openssl_key(dir: &Path, name: &str, genpkey: &[&str]) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let mut args = vec!["genpkey"];
    args.extend_from_slice(genpkey);
    args.extend_from_slice(&["-out", p(&key)]);
    openssl(&args);
    openssl(&["pkey", "-in", p(&key), "-pubout", "-out", p(&public)]);
    (key, public)
}

/// An unsigned package of version `version` in `dir` (its content differs per `dir`).
fn package(dir: &Path, version: &str) -> PathBuf {
    let text = format!("# {version} for {}\nconf = 0.3\n", dir.display());
    let files = [("detect.toml", text.into_bytes())];
    make_package(dir, version, &files, None, None).package
}

/// `ota install PKG --public-key KEY` into a fresh state folder (the signature is
/// `PKG.sig`, or `signature` when given).
fn install(pkg: &Path, key: &str, signature: Option<&str>) -> (Output, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let mut args = vec![
        "install",
        p(pkg),
        "--yes",
        "--state-dir",
        p(state.path()),
        "--public-key",
        key,
    ];
    if let Some(s) = signature {
        args.extend_from_slice(&["--signature", s]);
    }
    (ota(&args), state)
}

fn assert_installed(pkg: &Path, key: &Path, version: &str, what: &str) {
    let (o, state) = install(pkg, p(key), None);
    assert!(o.status.success(), "{what}: {}", stderr(&o));
    assert_eq!(
        status(state.path())["committed"]["version"],
        version,
        "{what}"
    );
}

fn assert_refused(pkg: &Path, key: &str, signature: Option<&str>, why: &str, what: &str) {
    let (o, state) = install(pkg, key, signature);
    let err = stderr(&o);
    assert!(!o.status.success(), "{what}: installed");
    assert!(err.contains(why), "{what}: {err}");
    assert!(
        status(state.path())["committed"]["version"].is_null(),
        "{what}: a version became active"
    );
}

#[test]
fn packages_signed_by_openssl_are_installed_with_every_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keys = [
        (
            "rsa-2048",
            vec!["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        ),
        (
            "rsa-3072",
            vec!["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072"],
        ),
        (
            "rsa-4096",
            vec!["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:4096"],
        ),
        (
            "ecdsa-p256",
            vec!["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        ),
    ];
    for (n, (name, genpkey)) in keys.iter().enumerate() {
        let (key, public) = openssl_key(d, name, genpkey);
        // What a fleet's signing step writes: `openssl dgst -sha256 -sign`.
        let version = format!("1.{n}.0");
        let pkg = package(&d.join(name), &version);
        let sig = format!("{}.sig", p(&pkg));
        openssl(&["dgst", "-sha256", "-sign", p(&key), "-out", &sig, p(&pkg)]);
        assert_installed(&pkg, &public, &version, &format!("{name} dgst"));

        // The same key as an X.509 certificate.
        let cert = d.join(format!("{name}.crt"));
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            p(&key),
            "-subj",
            "/CN=fleet signing",
            "-days",
            "1",
            "-out",
            p(&cert),
        ]);
        assert_installed(&pkg, &cert, &version, &format!("{name} certificate"));

        // `pkeyutl` over the digest computed beforehand.
        let digest = d.join(format!("{name}.digest"));
        openssl(&["dgst", "-sha256", "-binary", "-out", p(&digest), p(&pkg)]);
        openssl(&[
            "pkeyutl",
            "-sign",
            "-inkey",
            p(&key),
            "-pkeyopt",
            "digest:sha256",
            "-in",
            p(&digest),
            "-out",
            &sig,
        ]);
        assert_installed(&pkg, &public, &version, &format!("{name} pkeyutl"));

        if name.starts_with("rsa") {
            // PSS with OpenSSL's default salt (the longest) and with a digest-long salt.
            for salt in [None, Some("rsa_pss_saltlen:digest")] {
                let mut args = vec!["dgst", "-sha256", "-sigopt", "rsa_padding_mode:pss"];
                if let Some(s) = salt {
                    args.extend_from_slice(&["-sigopt", s]);
                }
                args.extend_from_slice(&["-sign", p(&key), "-out", &sig, p(&pkg)]);
                openssl(&args);
                assert_installed(&pkg, &public, &version, &format!("{name} PSS {salt:?}"));
            }
        }
    }
}

#[test]
fn packages_signed_by_python_cryptography_are_installed() {
    let dir = tempfile::tempdir().unwrap();
    for (n, scheme) in ["ecdsa-p256", "rsa-pkcs1", "rsa-pss-max", "rsa-pss-digest"]
        .iter()
        .enumerate()
    {
        let version = format!("2.{n}.0");
        let pkg = package(&dir.path().join(scheme), &version);
        let public = dir.path().join(format!("{scheme}.pub"));
        let sig = format!("{}.sig", p(&pkg));
        support::run_py("sign_package.py", &[scheme, p(&pkg), &sig, p(&public)]);
        assert_installed(&pkg, &public, &version, scheme);
    }
}

#[test]
fn wrong_keys_other_packages_cut_and_missing_signatures_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rsa = ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"];
    let (key, public) = openssl_key(d, "signer", &rsa);
    let (_, stranger) = openssl_key(d, "stranger", &rsa);
    let (ec_key, ec_public) = openssl_key(
        d,
        "ec",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let pkg = package(&d.join("one"), "3.0.0");
    let other = package(&d.join("two"), "3.0.0");
    let sig = format!("{}.sig", p(&pkg));
    let sign = |key: &Path, what: &Path| {
        openssl(&["dgst", "-sha256", "-sign", p(key), "-out", &sig, p(what)]);
    };
    let no_match = "does not match the package";

    sign(&key, &pkg);
    assert_refused(&pkg, p(&stranger), None, no_match, "another key");
    assert_refused(
        &pkg,
        p(&ec_public),
        None,
        no_match,
        "a key of another algorithm",
    );

    sign(&key, &other);
    assert_refused(
        &pkg,
        p(&public),
        None,
        no_match,
        "a signature of another package",
    );

    sign(&ec_key, &pkg);
    let mut der = std::fs::read(&sig).unwrap();
    der.pop();
    std::fs::write(&sig, &der).unwrap();
    assert_refused(&pkg, p(&ec_public), None, no_match, "a cut ECDSA signature");

    std::fs::remove_file(&sig).unwrap();
    assert_refused(
        &pkg,
        p(&public),
        None,
        "a signature is required and none came with the update",
        "no signature",
    );

    // A private key is never taken as the robot's trusted key.
    let (o, _) = install(&pkg, p(&key), None);
    assert!(
        stderr(&o).contains("this is a private key"),
        "{}",
        stderr(&o)
    );

    // A signature given on the command line (base64), as a job document carries it.
    sign(&key, &pkg);
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&sig).unwrap());
    std::fs::remove_file(&sig).unwrap();
    let (o, state) = install(&pkg, p(&public), Some(&b64));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(status(state.path())["committed"]["version"], "3.0.0");
    let cut = &b64[..b64.len() - 8];
    assert_refused(
        &pkg,
        p(&public),
        Some(cut),
        no_match,
        "a cut base64 signature",
    );
}

#[test]
fn keys_made_by_ota_keygen_sign_what_openssl_verifies_and_rotation_trusts_both() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = d.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("detect.toml"), "conf = 0.3\n").unwrap();
    let mut publics = Vec::new();
    for (n, alg) in ["ecdsa-p256", "rsa-3072"].iter().enumerate() {
        let key = d.join(format!("{alg}.key"));
        let o = ota(&["keygen", "--algorithm", alg, "--out", p(&key)]);
        assert!(o.status.success(), "{}", stderr(&o));
        let public = PathBuf::from(format!("{}.pub", p(&key)));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "{alg}: the private key is readable by others"
        );
        let out = d.join(format!("out-{alg}"));
        std::fs::create_dir_all(&out).unwrap();
        let version = format!("4.{n}.0");
        let o = ota(&[
            "pack",
            p(&src),
            "--version",
            &version,
            "--key",
            p(&key),
            "--out",
            p(&out),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let pkg = out.join(format!("detector-{version}.tar.gz"));
        let sig = format!("{}.sig", p(&pkg));
        // OpenSSL verifies the agent's signature as it verifies its own.
        let v = openssl(&[
            "dgst",
            "-sha256",
            "-verify",
            p(&public),
            "-signature",
            &sig,
            p(&pkg),
        ]);
        assert!(String::from_utf8_lossy(&v.stdout).contains("Verified OK"));
        publics.push((pkg, std::fs::read_to_string(&public).unwrap()));
    }
    // One file with both keys (old and new side by side): each package is accepted.
    let both = d.join("trusted.pem");
    std::fs::write(&both, format!("{}{}", publics[0].1, publics[1].1)).unwrap();
    for (pkg, _) in &publics {
        let (o, _) = install(pkg, p(&both), None);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    // Only the first: the second package is refused.
    let first = d.join("first.pem");
    std::fs::write(&first, &publics[0].1).unwrap();
    assert_refused(
        &publics[1].0,
        p(&first),
        None,
        "does not match the package",
        "a key no longer trusted",
    );
}

#[test]
fn the_configuration_names_each_trusted_key_and_refuses_a_private_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, public) = openssl_key(
        d,
        "fleet",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072"],
    );
    let (_, ec) = openssl_key(
        d,
        "fleet-ec",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let config = |ota: &str| {
        let c = d.join("agent.toml");
        std::fs::write(
            &c,
            format!(
                "state_dir = {:?}\n[device]\nproduct_key = \"pk\"\ndevice_name = \"robot-1\"\n[mqtt]\nprofile = \"plain\"\nhost = \"127.0.0.1\"\n[ota]\n{ota}\n",
                p(&d.join("state"))
            ),
        )
        .unwrap();
        support::ota::agent()
            .args(["check-config"])
            .arg(&c)
            .output()
            .unwrap()
    };
    let o = config(&format!(
        "public_key = {{ file = {:?} }}\npublic_keys = [{{ file = {:?} }}]",
        p(&public),
        p(&ec)
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("signed packages only (rsa-3072, ecdsa-p256)"),
        "{text}"
    );
    let o = config(&format!("public_keys = [{{ file = {:?} }}]", p(&key)));
    assert_eq!(o.status.code(), Some(64));
    let err = stderr(&o);
    assert!(
        err.contains("ota.public_keys[0]") && err.contains("this is a private key"),
        "{err}"
    );
}
