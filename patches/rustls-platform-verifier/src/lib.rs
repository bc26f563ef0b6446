//! libappsignal's own `rustls-platform-verifier`: the crate of that name and version on crates.io
//! is replaced by this one (`[patch.crates-io]` in the workspace's `Cargo.toml`). Not a copy of it.
//!
//! Why: reqwest 0.13 (feature `rustls-no-provider`) always depends on `rustls-platform-verifier`,
//! which on Apple targets verifies through Security.framework and links it and CoreFoundation. A C
//! program linking `libappsignal.a` would then need `-framework Security -framework CoreFoundation`,
//! and `libappsignal.dylib` would load both into every app process. This crate has the same
//! interface as far as reqwest uses it ([`Verifier::new`], [`Verifier::new_with_extra_roots`], the
//! [`ServerCertVerifier`] impl) and verifies with rustls's webpki verifier against:
//!
//! - the extra roots given (`_APPSIGNAL_CA_FILE_PATH`); one that does not parse is an error;
//! - on Linux and other non-Apple systems, the system's CA store through `rustls-native-certs`, as
//!   the upstream crate does there (certificates that do not parse are skipped; an error only when
//!   no root at all was loaded);
//! - on Apple targets, Mozilla's root program as compiled into `webpki-roots`. A root added to the
//!   macOS keychain is not trusted; give it as an extra root instead.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, Error, OtherError, RootCertStore, SignatureScheme};

/// A server certificate verifier: webpki, with the roots named in the crate documentation.
#[derive(Debug)]
pub struct Verifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl Verifier {
    /// A verifier trusting the platform's roots. The store is read now, so a new verifier sees a
    /// changed system store.
    pub fn new(crypto_provider: Arc<CryptoProvider>) -> Result<Self, Error> {
        Self::new_with_extra_roots([], crypto_provider)
    }

    /// A verifier trusting the platform's roots and `extra_roots`; an extra root that does not
    /// parse is an error.
    pub fn new_with_extra_roots(
        extra_roots: impl IntoIterator<Item = CertificateDer<'static>>,
        crypto_provider: Arc<CryptoProvider>,
    ) -> Result<Self, Error> {
        let mut roots = RootCertStore::empty();
        for root in extra_roots {
            roots.add(root)?;
        }
        add_platform_roots(&mut roots)?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), crypto_provider)
            .build()
            .map_err(|e| Error::Other(OtherError(Arc::new(e))))?;
        Ok(Verifier { inner })
    }
}

/// The system's CA store. An error only when no root at all is known by then (extra roots count):
/// a few unreadable system certificates must not stop connections that would work.
#[cfg(not(target_vendor = "apple"))]
fn add_platform_roots(roots: &mut RootCertStore) -> Result<(), Error> {
    let loaded = rustls_native_certs::load_native_certs();
    for error in &loaded.errors {
        log::warn!("cannot load the system's CA certificates: {error}");
    }
    let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
    if ignored > 0 {
        log::warn!("{ignored} of the system's CA certificates were ignored (unparsable)");
    }
    if roots.is_empty() {
        return Err(Error::General(
            "No CA certificates were loaded from the system".to_owned(),
        ));
    }
    log::debug!("loaded {added} CA certificates from the system");
    Ok(())
}

/// Mozilla's roots (`webpki-roots`), compiled in: the keychain needs Security.framework.
#[cfg(target_vendor = "apple")]
fn add_platform_roots(roots: &mut RootCertStore) -> Result<(), Error> {
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    Ok(())
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// Extra roots are the caller's: one that does not parse is reported, not skipped.
    #[test]
    fn an_extra_root_that_does_not_parse_is_an_error() {
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        let err = Verifier::new_with_extra_roots([garbage], provider()).unwrap_err();
        assert!(matches!(err, Error::InvalidCertificate(_)), "{err:?}");
    }

    /// Mozilla's roots are compiled in, so there is always something to verify against.
    #[cfg(target_vendor = "apple")]
    #[test]
    fn apple_targets_trust_the_compiled_in_roots() {
        let mut roots = RootCertStore::empty();
        add_platform_roots(&mut roots).unwrap();
        assert!(roots.len() > 50, "{} roots", roots.len());
        Verifier::new(provider()).unwrap();
    }
}
