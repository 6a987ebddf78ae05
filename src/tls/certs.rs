//! Certificates for a local cluster (`ondisk ctl certs DIR`): a CA, one certificate per node
//! good for both ends of the raft port and for the client port, and a client certificate.
//!
//! The CA is made once and kept in DIR; running the command again signs new node and client
//! certificates with it, replacing the old files atomically (write, then rename), which is how
//! certificates are rotated under running nodes: they pick up the new files by themselves.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use rcgen::BasicConstraints;
use rcgen::CertificateParams;
use rcgen::DistinguishedName;
use rcgen::DnType;
use rcgen::ExtendedKeyUsagePurpose;
use rcgen::IsCa;
use rcgen::Issuer;
use rcgen::KeyPair;
use rcgen::KeyUsagePurpose;
use time::OffsetDateTime;

/// The CA's file names in the directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";
/// How long the CA is valid: long, since replacing it means replacing every certificate.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Backdating of `not_before`, so a clock slightly behind another member's accepts a new
/// certificate at once.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// How long ago a certificate made with no validity expired.
const EXPIRED_AGO: Duration = Duration::from_secs(60);

/// What to make.
#[derive(Debug, Clone)]
pub struct CertRequest {
    /// Node ids: `node<ID>.pem` and `node<ID>-key.pem` for each.
    pub nodes: Vec<u64>,
    /// Host names and IP addresses every node certificate names (what peers and clients dial).
    pub hosts: Vec<String>,
    /// The client certificate's common name (`<NAME>.pem`, `<NAME>-key.pem`); none if empty.
    pub client: String,
    /// Validity of the node and client certificates; zero makes certificates that have just
    /// expired (for trying out what an expired certificate does).
    pub validity: Duration,
}

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot use the CA in {dir}: {reason}")]
    Ca { dir: PathBuf, reason: String },
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Makes the certificates `request` asks for in `dir` (created if missing), and a CA first if
/// `dir` has none. Returns the files written.
pub fn generate(dir: &Path, request: &CertRequest) -> Result<Vec<PathBuf>, CertsError> {
    fs::create_dir_all(dir).map_err(|source| CertsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut written = Vec::new();
    let issuer = match load_ca(dir)? {
        Some(issuer) => issuer,
        None => {
            let (params, key) = new_ca()?;
            let cert = params.self_signed(&key)?;
            written.push(write(dir, CA_CERT, &cert.pem(), false)?);
            written.push(write(dir, CA_KEY, &key.serialize_pem(), true)?);
            Issuer::new(params, key)
        }
    };
    let now = OffsetDateTime::now_utc();
    for id in &request.nodes {
        let name = format!("node{id}");
        let mut params = CertificateParams::new(request.hosts.clone())?;
        params.distinguished_name = common_name(&name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        written.extend(leaf(dir, &name, params, &issuer, now, request.validity)?);
    }
    if !request.client.is_empty() {
        let mut params = CertificateParams::new(Vec::new())?;
        params.distinguished_name = common_name(&request.client);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        written.extend(leaf(
            dir,
            &request.client,
            params,
            &issuer,
            now,
            request.validity,
        )?);
    }
    Ok(written)
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

fn new_ca() -> Result<(CertificateParams, KeyPair), CertsError> {
    let mut params = CertificateParams::new(Vec::new())?;
    // A name of its own: a verifier looks a certificate's issuer up by name, so two CAs with
    // one name would make a foreign certificate fail on its signature, a less clear error.
    params.distinguished_name = common_name(&format!("ondisk CA {:08x}", rand::random::<u32>()));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + CA_VALIDITY;
    Ok((params, KeyPair::generate()?))
}

/// The CA in `dir`, if both of its files are there.
fn load_ca(dir: &Path) -> Result<Option<Issuer<'static, KeyPair>>, CertsError> {
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    if !cert_path.exists() && !key_path.exists() {
        return Ok(None);
    }
    let failed = |reason: String| CertsError::Ca {
        dir: dir.to_path_buf(),
        reason,
    };
    let read = |path: &Path| {
        fs::read_to_string(path).map_err(|e| failed(format!("{}: {e}", path.display())))
    };
    let key = KeyPair::from_pem(&read(&key_path)?)
        .map_err(|e| failed(format!("{}: {e}", key_path.display())))?;
    let issuer = Issuer::from_ca_cert_pem(&read(&cert_path)?, key)
        .map_err(|e| failed(format!("{}: {e}", cert_path.display())))?;
    Ok(Some(issuer))
}

/// Signs one leaf certificate with a new key and writes `<name>.pem` and `<name>-key.pem`.
fn leaf(
    dir: &Path,
    name: &str,
    mut params: CertificateParams,
    issuer: &Issuer<'_, KeyPair>,
    now: OffsetDateTime,
    validity: Duration,
) -> Result<[PathBuf; 2], CertsError> {
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.not_before = now - CLOCK_SKEW;
    // Certificate times are whole seconds and a certificate is valid through its last one, so
    // "expired" has to lie in the past.
    params.not_after = if validity.is_zero() {
        now - EXPIRED_AGO
    } else {
        now + validity
    };
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    // The key first: a node reloading between the two renames sees a key that does not match
    // its certificate, refuses the pair and keeps the old one until the certificate follows.
    let key_path = write(dir, &format!("{name}-key.pem"), &key.serialize_pem(), true)?;
    let cert_path = write(dir, &format!("{name}.pem"), &cert.pem(), false)?;
    Ok([cert_path, key_path])
}

/// Writes `contents` to `dir/name` by renaming a finished temporary file over it, so a reader
/// sees the old file or the new one, never part of one. Keys are readable by the owner only.
fn write(dir: &Path, name: &str, contents: &str, secret: bool) -> Result<PathBuf, CertsError> {
    let path = dir.join(name);
    let temporary = dir.join(format!(".{name}.tmp"));
    let failed = |source| CertsError::Write {
        path: path.clone(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&temporary)
        .map_err(failed)?;
    file.write_all(contents.as_bytes()).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    fs::rename(&temporary, &path).map_err(failed)?;
    Ok(path)
}
