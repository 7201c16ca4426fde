//! jwt-auth through real sockets: tokens signed here with the jsonwebtoken crate (HMAC) and
//! with keys the openssl command made (RSA, ECDSA), sent by header, query and cookie.

use crate::harness::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn hs(alg: Algorithm, secret: &[u8], claims: serde_json::Value) -> String {
    encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// A token with the given header and payload JSON and a signature made of `signature`.
fn raw(header: &str, payload: &str, signature: &str) -> String {
    use base64::Engine;
    let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!("{}.{}.{signature}", b(header), b(payload))
}

fn echo() -> Backend {
    Backend::start(|s| {
        Reply::ok(&format!(
            "user={} cred={} auth={} cookie={} target={}",
            s.header("x-consumer-username").unwrap_or("-"),
            s.header("x-credential-identifier").unwrap_or("-"),
            s.header("authorization").unwrap_or("-"),
            s.header("cookie").unwrap_or("-"),
            s.target
        ))
    })
}

#[test]
fn jwt_auth_accepts_good_tokens_and_refuses_the_rest_as_apisix_does() {
    let be = echo();
    let dir = temp_dir("jwt");
    openssl(&dir, "genrsa -out rsa.key 2048");
    openssl(&dir, "rsa -in rsa.key -pubout -out rsa.pub");
    openssl(&dir, "ecparam -name prime256v1 -genkey -noout -out ec.key");
    openssl(&dir, "ec -in ec.key -pubout -out ec.pub");
    openssl(&dir, "pkcs8 -topk8 -nocrypt -in ec.key -out ec8.key");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let up = format!("upstream = {{ nodes = {{ \"{}\" = 1 }} }}", be.addr());
    std::env::set_var("SG_TEST_JWT_SECRET", "env-secret");
    let body = format!(
        r#"[[routes]]
uri = "/a"
plugins.jwt-auth = {{}}
{up}
[[routes]]
uri = "/hidden"
plugins.jwt-auth = {{ hide_credentials = true }}
{up}
[[routes]]
uri = "/strict"
plugins.jwt-auth = {{ claims_to_verify = ["exp", "nbf"], key_claim_name = "iss" }}
{up}
[[consumers]]
username = "hs"
plugins.jwt-auth = {{ key = "hs-key", secret = "hs-secret", lifetime_grace_period = 30 }}
[[consumers]]
username = "env"
plugins.jwt-auth = {{ key = "env-key", secret = "$env://SG_TEST_JWT_SECRET", algorithm = "HS512" }}
[[consumers]]
username = "rsa"
[[credentials]]
id = "rsa-cred"
consumer = "rsa"
plugins.jwt-auth = {{ key = "rsa-key", algorithm = "RS256", public_key = '''{rsa}''' }}
[[consumers]]
username = "ec"
plugins.jwt-auth = {{ key = "ec-key", algorithm = "ES256", public_key = '''{ec}''' }}
"#,
        rsa = read("rsa.pub"),
        ec = read("ec.pub"),
    );
    let gw = Gateway::start(&body);
    let get = |path: &str, headers: &[(&str, &str)]| gw.client().request("GET", path, headers, b"");
    let bearer = |t: &str| format!("Bearer {t}");
    let message = |r: &Response| r.json()["message"].as_str().unwrap_or("").to_string();

    let t = now();
    let good = hs(
        Algorithm::HS256,
        b"hs-secret",
        json!({ "key": "hs-key", "exp": t + 60 }),
    );
    // By header (with and without "Bearer "), query and cookie.
    let r = get("/a", &[("Authorization", &bearer(&good))]);
    assert_eq!(r.status, 200);
    assert!(
        r.text().starts_with("user=hs cred=- auth=Bearer"),
        "{}",
        r.text()
    );
    assert_eq!(get("/a", &[("Authorization", &good)]).status, 200);
    assert_eq!(get(&format!("/a?jwt={good}"), &[]).status, 200);
    assert_eq!(get("/a", &[("Cookie", &format!("jwt={good}"))]).status, 200);
    // Secrets from the environment; RS256 and ES256 with public keys.
    let env = hs(Algorithm::HS512, b"env-secret", json!({ "key": "env-key" }));
    assert!(get("/a", &[("Authorization", &env)])
        .text()
        .starts_with("user=env"));
    let rsa = encode(
        &Header::new(Algorithm::RS256),
        &json!({ "key": "rsa-key", "exp": t + 60 }),
        &EncodingKey::from_rsa_pem(read("rsa.key").as_bytes()).unwrap(),
    )
    .unwrap();
    assert!(get("/a", &[("Authorization", &rsa)])
        .text()
        .starts_with("user=rsa cred=rsa-cred"));
    let ec = encode(
        &Header::new(Algorithm::ES256),
        &json!({ "key": "ec-key" }),
        &EncodingKey::from_ec_pem(read("ec8.key").as_bytes()).unwrap(),
    )
    .unwrap();
    assert!(get("/a", &[("Authorization", &ec)])
        .text()
        .starts_with("user=ec"));

    // Refusals: 401, the Bearer challenge, APISIX's messages.
    let r = get("/a", &[]);
    assert_eq!(
        (r.status, message(&r)),
        (401, "Missing JWT token in request".into())
    );
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"jwt\""));
    let refused: Vec<(&str, String, &str)> = vec![
        ("garbage", "not.a.jwt".into(), "JWT token invalid"),
        ("two parts", "abc.def".into(), "JWT token invalid"),
        (
            "no key claim",
            hs(Algorithm::HS256, b"hs-secret", json!({ "sub": "x" })),
            "missing user key in JWT token",
        ),
        (
            "unknown key",
            hs(Algorithm::HS256, b"hs-secret", json!({ "key": "nobody" })),
            "failed to verify jwt",
        ),
        (
            "wrong secret",
            hs(Algorithm::HS256, b"guess", json!({ "key": "hs-key" })),
            "failed to verify jwt",
        ),
        (
            "another algorithm than the credential's",
            hs(Algorithm::HS512, b"hs-secret", json!({ "key": "hs-key" })),
            "failed to verify jwt",
        ),
        (
            "alg none",
            raw(r#"{"alg":"none","typ":"JWT"}"#, r#"{"key":"hs-key"}"#, ""),
            "failed to verify jwt",
        ),
        (
            "HS256 signed with the RSA public key (algorithm confusion)",
            hs(
                Algorithm::HS256,
                read("rsa.pub").as_bytes(),
                json!({ "key": "rsa-key" }),
            ),
            "failed to verify jwt",
        ),
        (
            "tampered payload",
            {
                let parts: Vec<&str> = good.split('.').collect();
                let other = hs(
                    Algorithm::HS256,
                    b"x",
                    json!({ "key": "hs-key", "admin": true }),
                );
                format!(
                    "{}.{}.{}",
                    parts[0],
                    other.split('.').nth(1).unwrap(),
                    parts[2]
                )
            },
            "failed to verify jwt",
        ),
        (
            "expired beyond the grace period",
            hs(
                Algorithm::HS256,
                b"hs-secret",
                json!({ "key": "hs-key", "exp": t - 100 }),
            ),
            "failed to verify jwt",
        ),
        (
            "not valid before a time beyond the grace period",
            hs(
                Algorithm::HS256,
                b"hs-secret",
                json!({ "key": "hs-key", "nbf": t + 100 }),
            ),
            "failed to verify jwt",
        ),
    ];
    for (what, token, want) in refused {
        let r = get("/a", &[("Authorization", &bearer(&token))]);
        assert_eq!((r.status, message(&r)), (401, want.to_string()), "{what}");
    }
    // Within the 30 s grace period: accepted.
    let late = hs(
        Algorithm::HS256,
        b"hs-secret",
        json!({ "key": "hs-key", "exp": t - 10 }),
    );
    assert_eq!(get("/a", &[("Authorization", &late)]).status, 200);
    // claims_to_verify makes exp and nbf required; key_claim_name picks the claim.
    let no_exp = hs(
        Algorithm::HS256,
        b"hs-secret",
        json!({ "iss": "hs-key", "nbf": t - 5 }),
    );
    assert_eq!(get("/strict", &[("Authorization", &no_exp)]).status, 401);
    let both = hs(
        Algorithm::HS256,
        b"hs-secret",
        json!({ "iss": "hs-key", "nbf": t - 5, "exp": t + 60 }),
    );
    assert_eq!(get("/strict", &[("Authorization", &both)]).status, 200);

    // hide_credentials: the header, the query argument or the cookie (other cookies kept)
    // do not reach the upstream.
    let r = get("/hidden", &[("Authorization", &bearer(&good))]);
    assert_eq!(r.text(), "user=hs cred=- auth=- cookie=- target=/hidden");
    let r = get(&format!("/hidden?a=1&jwt={good}"), &[]);
    assert_eq!(
        r.text(),
        "user=hs cred=- auth=- cookie=- target=/hidden?a=1"
    );
    let r = get("/hidden", &[("Cookie", &format!("a=1; jwt={good}; b=2"))]);
    assert_eq!(
        r.text(),
        "user=hs cred=- auth=- cookie=a=1; b=2 target=/hidden"
    );
    assert!(!gw.events().contains("env-secret"));
}

#[test]
fn jwt_auth_credentials_are_checked_naming_the_field() {
    for (conf, want) in [
        ("{ secret = \"s\" }", "property \"key\" is required"),
        (
            "{ key = \"k\" }",
            "property \"secret\" is required when using HS based algorithms",
        ),
        (
            "{ key = \"k\", algorithm = \"RS256\" }",
            "missing valid public key",
        ),
        (
            "{ key = \"k\", algorithm = \"RS256\", public_key = \"nope\" }",
            "public_key",
        ),
        (
            "{ key = \"k\", algorithm = \"XS1\", secret = \"s\" }",
            "algorithm",
        ),
        (
            "{ key = \"k\", secret = \"***\", base64_secret = true }",
            "not in base64 format",
        ),
    ] {
        let (ok, out) = check_config(&format!(
            "[[consumers]]\nusername = \"u\"\nplugins.jwt-auth = {conf}\n"
        ));
        assert!(!ok, "{conf} accepted");
        assert!(
            out.contains("consumers[0]") && out.contains(want),
            "{conf}: {out}"
        );
    }
}
