use super::*;
use std::path::PathBuf;

/// A directory of PEM files, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d =
            std::env::temp_dir().join(format!("ebbtide-tls-unit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn path(&self, f: &str) -> String {
        self.0.join(f).display().to_string()
    }

    /// A self-signed certificate for `names` (CN = `cn`) as `{stem}.crt` and `{stem}.key`.
    fn cert(&self, stem: &str, cn: &str, names: &[&str]) -> TlsCert {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(self.path(&format!("{stem}.crt")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{stem}.key")), key.serialize_pem()).unwrap();
        TlsCert {
            cert: self.path(&format!("{stem}.crt")),
            key: self.path(&format!("{stem}.key")),
        }
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn listener(certs: Vec<TlsCert>) -> Listener {
    Listener {
        tls: certs,
        ..Listener::default()
    }
}

/// The subject common name of the certificate `tls` hands a client asking for `sni`.
fn served(tls: &Tls, sni: Option<&str>) -> String {
    let set = tls.resolver.set.read().unwrap().clone();
    let der = set.pick(sni).cert[0].clone();
    common_name(&der)
}

/// The CN of a DER certificate, found by its OID (2.5.4.3) followed by a string.
fn common_name(der: &[u8]) -> String {
    let oid = [0x06, 0x03, 0x55, 0x04, 0x03];
    let at = der.windows(oid.len()).position(|w| w == oid).expect("a CN");
    let len = der[at + oid.len() + 1] as usize;
    let start = at + oid.len() + 2;
    String::from_utf8_lossy(&der[start..start + len]).into_owned()
}

#[test]
fn sni_picks_by_exact_then_wildcard_name_else_the_default() {
    let d = Dir::new("sni");
    let tls = Tls::new(&listener(vec![
        d.cert("default", "default", &["default.test"]),
        d.cert("a", "a", &["a.test", "alias.test"]),
        d.cert("wild", "wild", &["*.wild.test"]),
        // a.test is taken by the entry above: the first listed keeps it.
        d.cert("late", "late", &["a.test", "late.test"]),
    ]))
    .unwrap();
    assert_eq!(served(&tls, Some("a.test")), "a");
    assert_eq!(served(&tls, Some("alias.test")), "a");
    assert_eq!(served(&tls, Some("A.Test")), "a");
    assert_eq!(served(&tls, Some("late.test")), "late");
    assert_eq!(served(&tls, Some("x.wild.test")), "wild");
    // A wildcard covers one label only (RFC 6125 6.4.3), and not the bare parent.
    assert_eq!(served(&tls, Some("y.x.wild.test")), "default");
    assert_eq!(served(&tls, Some("wild.test")), "default");
    assert_eq!(served(&tls, Some("other.test")), "default");
    assert_eq!(served(&tls, None), "default");
}

fn problems(l: &Listener) -> Vec<(String, String)> {
    Tls::check(l)
        .into_iter()
        .map(|p| (p.key, p.message))
        .collect()
}

#[test]
fn missing_files_empty_pem_and_a_foreign_key_are_named_at_their_keys() {
    let d = Dir::new("bad");
    let good = d.cert("good", "good", &["good.test"]);
    let other = d.cert("other", "other", &["other.test"]);
    let p = problems(&listener(vec![TlsCert {
        cert: d.path("nope.crt"),
        key: d.path("nope.key"),
    }]));
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!(p[0].0, "listener.tls[0].cert");
    assert!(
        p[0].1.contains("cannot read") && p[0].1.contains("nope.crt"),
        "{p:?}"
    );
    assert_eq!(p[1].0, "listener.tls[0].key");

    std::fs::write(d.path("empty.pem"), "not pem at all\n").unwrap();
    let p = problems(&listener(vec![TlsCert {
        cert: d.path("empty.pem"),
        key: d.path("empty.pem"),
    }]));
    assert!(p[0].1.contains("no PEM certificate"), "{p:?}");
    assert!(p[1].1.contains("no PEM private key"), "{p:?}");

    // The key of another certificate.
    let p = problems(&listener(vec![
        good.clone(),
        TlsCert {
            cert: other.cert.clone(),
            key: good.key.clone(),
        },
    ]));
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0, "listener.tls[1].key");
    assert!(p[0].1.contains("does not match"), "{p:?}");

    // Only the default may have no DNS names: SNI could never choose another such.
    let nameless = d.cert("nameless", "nameless", &[]);
    assert!(problems(&listener(vec![nameless.clone(), good.clone()])).is_empty());
    let p = problems(&listener(vec![good.clone(), nameless]));
    assert_eq!(p[0].0, "listener.tls[1].cert");
    assert!(p[0].1.contains("SNI can never choose it"), "{p:?}");

    // A client CA file that holds no certificate.
    let mut l = listener(vec![good]);
    l.client_ca = Some(d.path("empty.pem"));
    let p = problems(&l);
    assert_eq!(p[0].0, "listener.client_ca");
}

#[test]
fn reload_swaps_certificates_and_a_bad_set_keeps_the_running_one() {
    let d = Dir::new("reload");
    let first = d.cert("site", "first", &["site.test"]);
    let l = listener(vec![first.clone()]);
    let tls = Tls::new(&l).unwrap();
    assert_eq!(served(&tls, Some("site.test")), "first");
    assert!(!tls.reload_if_changed(), "nothing changed yet");

    // A key that does not match: refused, the running certificate stays.
    let other = d.cert("other", "other", &["site.test"]);
    std::fs::copy(&other.key, &first.key).unwrap();
    assert!(tls.reload(&l).is_err());
    assert_eq!(served(&tls, Some("site.test")), "first");

    // Both files rotated: picked up by the change check.
    d.cert("site", "second", &["site.test"]);
    // Same length is possible; make the modification time differ for sure.
    let later = SystemTime::now() + Duration::from_secs(5);
    for f in [&first.cert, &first.key] {
        std::fs::File::options()
            .write(true)
            .open(f)
            .unwrap()
            .set_modified(later)
            .unwrap();
    }
    assert!(tls.reload_if_changed());
    assert_eq!(served(&tls, Some("site.test")), "second");
    assert!(!tls.reload_if_changed());

    // A SIGHUP reload with a new list of certificates.
    let extra = d.cert("extra", "extra", &["extra.test"]);
    tls.reload(&listener(vec![first, extra])).unwrap();
    assert_eq!(served(&tls, Some("extra.test")), "extra");
}

#[test]
fn redirect_keeps_host_and_target_and_names_the_https_port() {
    let req = |uri: &str, host: Option<&str>| {
        let mut b = http::Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(()).unwrap()
    };
    let location = |r: http::Response<_>| {
        assert_eq!(r.status(), 308);
        r.headers()["location"].to_str().unwrap().to_string()
    };
    assert_eq!(
        location(redirect(&req("/a/b?c=1", Some("example.test:8080")), 8443)),
        "https://example.test:8443/a/b?c=1"
    );
    assert_eq!(
        location(redirect(&req("/", Some("example.test")), 443)),
        "https://example.test/"
    );
    assert_eq!(
        location(redirect(&req("/x", Some("[::1]:80")), 8443)),
        "https://[::1]:8443/x"
    );
    assert_eq!(redirect(&req("/", None), 443).status(), 400);
    assert_eq!(redirect(&req("/", Some("bad host")), 443).status(), 400);
}
