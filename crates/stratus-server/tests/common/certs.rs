//! Certificates made at test time (rcgen) for a broker on TLS (`redis_tls.rs`, `nats.rs`):
//! a CA, a server certificate it signed and its key, and another CA that signed nothing of
//! the server's, as PEM files in a test's directory.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use stratus_testkit::{NatsTls, RedisTls};

use crate::common::Scratch;

/// The PEM files.
pub struct Certs {
    /// The server's certificate, for 127.0.0.1 and localhost.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA that signed it.
    pub ca: PathBuf,
    /// A CA that signed nothing of the server's.
    pub other_ca: PathBuf,
}

impl Certs {
    /// New ones, written into `scratch`.
    pub fn new(scratch: &Scratch) -> Self {
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            (cert, Issuer::new(params, key))
        };
        let (ca_cert, issuer) = ca("Stratus test CA");
        let (other_cert, _) = ca("Another CA");
        let key = KeyPair::generate().unwrap();
        let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let leaf = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        Self {
            cert: scratch.write("server.pem", &leaf.pem()).into(),
            key: scratch.write("server-key.pem", &key.serialize_pem()).into(),
            ca: scratch.write("ca.pem", &ca_cert.pem()).into(),
            other_ca: scratch.write("other-ca.pem", &other_cert.pem()).into(),
        }
    }

    /// The CA's path, as a flag takes it (`--broker-ca`).
    pub fn ca(&self) -> &str {
        self.ca.to_str().unwrap()
    }

    /// The other CA's path, as a flag takes it.
    pub fn other_ca(&self) -> &str {
        self.other_ca.to_str().unwrap()
    }

    /// A TLS Redis with the server's certificate (`stratus_testkit::RedisSetup::tls`).
    pub fn redis_tls(&self) -> RedisTls {
        RedisTls {
            cert: self.cert.clone(),
            key: self.key.clone(),
            ca: self.ca.clone(),
        }
    }

    /// A TLS nats-server with the server's certificate (`stratus_testkit::NatsSetup::tls`).
    pub fn nats_tls(&self) -> NatsTls {
        NatsTls {
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}
