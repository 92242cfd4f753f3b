use super::*;

const NOW: i64 = 1_800_000_000;

fn key(id: &str) -> UrlKey {
    UrlKey {
        id: id.to_owned(),
        secret: format!("{id}-secret-that-is-long-enough-for-hmac"),
    }
}

fn signer(keys: &[&str], signing: Option<&str>) -> UrlSigner {
    UrlSigner::new(&MediaUrlConfig {
        base_url: "https://media.example/v1/".to_owned(),
        keys: keys.iter().map(|k| key(k)).collect(),
        signing_key: signing.map(str::to_owned),
        ..MediaUrlConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

fn sample(s: &UrlSigner, ip: Option<IpAddr>) -> (Uuid, SignedUrl) {
    let media = Uuid::new_v4();
    (media, s.sign(media, "media/a b/ü|1.png", ip, NOW, None))
}

fn rejected(s: &UrlSigner, url: &str) -> &'static str {
    match s.verify(url, None, NOW) {
        Ok(v) => panic!("{url} verified: {v:?}"),
        Err(r) => r.reason(),
    }
}

#[test]
fn a_signed_url_verifies_and_names_its_object() {
    let s = signer(&["k1"], None);
    let (media, signed) = sample(&s, None);
    assert_eq!(signed.expires_at, NOW + 300);
    assert_eq!(signed.key_id, "k1");
    assert!(
        signed
            .url
            .starts_with("https://media.example/v1/media/a%20b/")
    );
    let v = s
        .verify(&signed.url, None, NOW)
        .unwrap_or_else(|r| panic!("{r:?}"));
    assert_eq!(v.media_id, media);
    assert_eq!(v.object_key, "media/a b/ü|1.png");
}

#[test]
fn every_tampering_has_its_own_reason() {
    let s = signer(&["k1", "k2"], Some("k1"));
    let (_, signed) = sample(&s, None);
    let url = signed.url.as_str();
    let path = url.replace("1.png", "2.png");
    assert_eq!(rejected(&s, &path), "SIGNED_URL_BAD_SIGNATURE");
    let later = url.replace(
        &format!("exp={}", NOW + 300),
        &format!("exp={}", NOW + 9_999),
    );
    assert_ne!(later, url);
    assert_eq!(rejected(&s, &later), "SIGNED_URL_BAD_SIGNATURE");
    let other_media = url.replace(
        &url[url.find("media=").unwrap_or(0) + 6..][..36],
        &Uuid::new_v4().to_string(),
    );
    assert_eq!(rejected(&s, &other_media), "SIGNED_URL_BAD_SIGNATURE");
    // The signature of another URL, or one character off.
    let (_, other) = sample(&s, None);
    let sig = |u: &str| u[u.find("sig=").unwrap_or(0) + 4..].to_owned();
    let swapped = url.replace(&sig(url), &sig(&other.url));
    assert_eq!(rejected(&s, &swapped), "SIGNED_URL_BAD_SIGNATURE");
    // Another configured key id: the MAC covers the key id and key.
    let kid = url.replace("kid=k1", "kid=k2");
    assert_eq!(rejected(&s, &kid), "SIGNED_URL_BAD_SIGNATURE");
    let unknown = url.replace("kid=k1", "kid=k9");
    assert_eq!(rejected(&s, &unknown), "SIGNED_URL_UNKNOWN_KEY");
    for bad in [
        url.replace("https://media.example", "https://evil.example"),
        url.replace("&sig=", "&sig=%%"),
        url.replace("&exp=", "&exp=x"),
        format!("{url}&kid=k1"),
        format!("{url}&admin=1"),
        url[..url.find('?').unwrap_or(0)].to_owned(),
        url.replace("media=", "media=nope"),
        String::new(),
    ] {
        assert_eq!(rejected(&s, &bad), "SIGNED_URL_MALFORMED", "{bad}");
    }
}

#[test]
fn expiry_is_exclusive() {
    let s = signer(&["k1"], None);
    let (_, signed) = sample(&s, None);
    let at = |now| s.verify(&signed.url, None, now);
    assert!(at(signed.expires_at - 1).is_ok());
    assert_eq!(
        at(signed.expires_at),
        Err(Rejection::Expired {
            expired_at: signed.expires_at
        })
    );
    let short = s.sign(Uuid::new_v4(), "k", None, NOW, Some(Duration::from_secs(1)));
    assert!(s.verify(&short.url, None, NOW).is_ok());
    assert!(s.verify(&short.url, None, NOW + 1).is_err());
}

#[test]
fn an_ip_bound_url_works_only_from_that_ip() {
    let s = signer(&["k1"], None);
    for ip in ["192.0.2.7", "2001:db8::7"] {
        let ip: IpAddr = ip.parse().unwrap_or_else(|e| panic!("{e}"));
        let (_, signed) = sample(&s, Some(ip));
        assert!(s.verify(&signed.url, Some(ip), NOW).is_ok());
        let other: IpAddr = "192.0.2.8".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            s.verify(&signed.url, Some(other), NOW),
            Err(Rejection::IpMismatch)
        );
        assert_eq!(s.verify(&signed.url, None, NOW), Err(Rejection::IpMismatch));
        // Dropping the binding breaks the signature.
        let unbound = signed.url.replace(
            &signed.url
                [signed.url.find("&ip=").unwrap_or(0)..signed.url.find("&sig=").unwrap_or(0)],
            "",
        );
        assert_eq!(rejected(&s, &unbound), "SIGNED_URL_BAD_SIGNATURE");
    }
}

#[test]
fn rotation_keeps_old_urls_valid_until_the_key_is_removed() {
    let old = signer(&["2026-10"], None);
    let (_, signed) = sample(&old, None);
    let rotated = signer(&["2026-10", "2026-11"], None);
    assert_eq!(sample(&rotated, None).1.key_id, "2026-11");
    assert!(rotated.verify(&signed.url, None, NOW).is_ok());
    let removed = signer(&["2026-11"], None);
    assert_eq!(rejected(&removed, &signed.url), "SIGNED_URL_UNKNOWN_KEY");
}

#[test]
fn bad_configuration_is_refused() {
    let short = MediaUrlConfig {
        keys: vec![UrlKey {
            id: "k".to_owned(),
            secret: "short".to_owned(),
        }],
        ..MediaUrlConfig::default()
    };
    assert!(UrlSigner::new(&short).is_err());
    let unknown_signing = MediaUrlConfig {
        keys: vec![key("k1")],
        signing_key: Some("k2".to_owned()),
        ..MediaUrlConfig::default()
    };
    assert!(UrlSigner::new(&unknown_signing).is_err());
    let twice = MediaUrlConfig {
        keys: vec![key("k1"), key("k1")],
        ..MediaUrlConfig::default()
    };
    assert!(UrlSigner::new(&twice).is_err());
    let bad_id = MediaUrlConfig {
        keys: vec![key("k 1")],
        ..MediaUrlConfig::default()
    };
    assert!(UrlSigner::new(&bad_id).is_err());
}
