//! `mint-token`: prints a JWT for the benchmarks, signed HS256 with a secret or RS256 with a
//! PEM private key, with every right (`{"*": ["read", "publish"]}` in the `chat` claim).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

#[derive(Debug, Parser)]
#[command(
    name = "mint-token",
    about = "A JWT with every right, for the benchmarks"
)]
struct Args {
    /// HS256 shared secret.
    #[arg(long, conflicts_with = "rsa_private_key")]
    secret: Option<String>,
    /// RS256: a PEM RSA private key file.
    #[arg(long)]
    rsa_private_key: Option<PathBuf>,
    /// `name` and (with a `bench:` prefix) `sub`.
    #[arg(long, default_value = "bench")]
    name: String,
    /// Lifetime, seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_secs: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (algorithm, key) = match (&args.secret, &args.rsa_private_key) {
        (Some(secret), None) => (
            Algorithm::HS256,
            EncodingKey::from_secret(secret.as_bytes())?,
        ),
        (None, Some(path)) => {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            (Algorithm::RS256, EncodingKey::from_rsa_pem(&pem)?)
        }
        _ => anyhow::bail!("give --secret or --rsa-private-key"),
    };
    let claims = serde_json::json!({
        "sub": format!("bench:{}", args.name),
        "name": args.name,
        "exp": jsonwebtoken::get_current_timestamp() + args.ttl_secs,
        "chat": {"*": ["read", "publish"]},
    });
    println!("{}", encode(&Header::new(algorithm), &claims, &key)?);
    Ok(())
}
